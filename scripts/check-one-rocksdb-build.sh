#!/usr/bin/env bash
# After `make test`, the build step of `make run` must find RocksDB built:
# the two quick-start commands share one RocksDB compilation, whichever runs
# first. Fails, naming the units, if cargo would build librocksdb-sys again
# (a feature or profile difference between the two commands changed its
# hash). Cheap when it passes: everything is fresh but the binary's link.
set -euo pipefail
cd "$(dirname "$0")/.."

checker=$(cat <<'PY'
import json, sys
stale, seen = [], 0
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if "librocksdb-sys" not in m.get("package_id", ""):
        continue
    if m.get("reason") not in ("compiler-artifact", "build-script-executed"):
        continue
    seen += 1
    # build-script-executed has no "fresh" field; its compiler-artifact
    # siblings do, and a rerun build script shows as a non-fresh artifact.
    if m.get("fresh") is False:
        stale.append(m.get("target", {}).get("name", m["reason"]))
if seen == 0:
    sys.exit("check-one-rocksdb-build: cargo reported no librocksdb-sys unit")
if stale:
    sys.exit("check-one-rocksdb-build: `make run` after `make test` rebuilt librocksdb-sys (%s): "
             "the two commands resolve RocksDB's build differently" % ", ".join(stale))
print("check-one-rocksdb-build: librocksdb-sys is fresh for `make run` after `make test`")
PY
)
cargo build --profile test -p heartbeater-cli --message-format json | python3 -c "$checker"
