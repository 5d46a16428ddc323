#!/usr/bin/env bash
# Generates a Python client from the .proto with grpcio-tools and runs
# examples/python/interop_check.py against two real nodes, then explores a
# node through reflection with grpcio-reflection (which speaks v1alpha).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v python3 >/dev/null 2>&1; then
    echo "python interop: skipped (no python3)"
    exit 0
fi
venv="${HEARTBEATER_PY_VENV:-$HOME/.cache/heartbeater-pyenv}"
if [ ! -x "$venv/bin/python" ]; then
    if ! python3 -m venv "$venv" 2>/dev/null; then
        # Debian ships venv support separately.
        rm -rf "$venv"
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        fi
        python3 -m venv "$venv"
    fi
fi
"$venv/bin/python" -c 'import grpc, grpc_tools, grpc_reflection' 2>/dev/null \
    || "$venv/bin/pip" install --quiet --disable-pip-version-check grpcio grpcio-tools grpcio-reflection

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    # A node writes to its data directory until it has stopped: wait, or
    # the removal races its last writes.
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

"$venv/bin/python" -m grpc_tools.protoc -I proto --python_out="$work" --grpc_python_out="$work" \
    proto/heartbeater/v1/heartbeater.proto
touch "$work/heartbeater/__init__.py" "$work/heartbeater/v1/__init__.py"

# The same build as `make test` (other cargo invocations may rebuild RocksDB).
cargo test --quiet --workspace --no-run
bin="${CARGO_TARGET_DIR:-target}/debug/heartbeater"

# Started in this shell (not in a command substitution) so their pids are
# recorded and the EXIT trap stops them; their output goes to files, so no
# pipe of ours stays open in them.
start_node() {
    local name=$1
    shift
    "$bin" serve --json --listen 127.0.0.1:0 "$@" >"$work/$name.out" 2>"$work/$name.err" </dev/null &
    pids+=($!)
}
first_line() {
    for _ in $(seq 100); do
        [ -s "$work/$1.out" ] && break
        sleep 0.1
    done
    head -n1 "$work/$1.out"
}
start_node monitor --in-memory
start_node peer --in-memory
monitor=$(first_line monitor)
peer=$(first_line peer)
field() { "$venv/bin/python" -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

PYTHONPATH="$work" "$venv/bin/python" examples/python/interop_check.py \
    "$(field "$monitor" listen)" "$(field "$peer" listen)" "$(field "$peer" identity)"
"$venv/bin/python" examples/python/reflection_check.py "$(field "$monitor" listen)"

# A registry of 100,000 peers, listed page by page.
"${CARGO_TARGET_DIR:-target}/debug/examples/fill_registry" "$work/large" 100000 >/dev/null
start_node large --data-dir "$work/large"
large=$(first_line large)
PYTHONPATH="$work" "$venv/bin/python" examples/python/list_all_peers.py "$(field "$large" listen)" 100000
