#!/usr/bin/env bash
# Generates a Python client from the .proto with grpcio-tools and runs
# examples/python/interop_check.py against two real nodes.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v python3 >/dev/null 2>&1; then
    echo "python interop: skipped (no python3)"
    exit 0
fi
venv="${HEARTBEATER_PY_VENV:-$HOME/.cache/heartbeater-pyenv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null \
    || "$venv/bin/pip" install --quiet --disable-pip-version-check grpcio grpcio-tools

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

"$venv/bin/python" -m grpc_tools.protoc -I proto --python_out="$work" --grpc_python_out="$work" \
    proto/heartbeater/v1/heartbeater.proto
touch "$work/heartbeater/__init__.py" "$work/heartbeater/v1/__init__.py"

# The same build as `make test` (other cargo invocations may rebuild RocksDB).
cargo test --quiet --workspace --no-run
bin="${CARGO_TARGET_DIR:-target}/debug/heartbeater"

start_node() {
    local out="$work/$1.out"
    "$bin" serve --json --in-memory --listen 127.0.0.1:0 >"$out" &
    pids+=($!)
    for _ in $(seq 100); do
        [ -s "$out" ] && break
        sleep 0.1
    done
    head -n1 "$out"
}
monitor=$(start_node monitor)
peer=$(start_node peer)
field() { "$venv/bin/python" -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

PYTHONPATH="$work" "$venv/bin/python" examples/python/interop_check.py \
    "$(field "$monitor" listen)" "$(field "$peer" listen)" "$(field "$peer" identity)"
