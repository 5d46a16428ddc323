#!/usr/bin/env bash
# The load run: a node with a RocksDB registry, 64 clients calling Heartbeat
# 100 times a second each, while 1,000 peers are registered and deregistered
# over and over and 100 stable peers are heartbeated every 100 ms. Fails
# unless every call succeeded, no peer was declared down and the node's
# memory stopped growing (the second half's peak within 10% of the first's).
#
#   scripts/load.sh            # 60 s
#   scripts/load.sh --quick    # 15 s
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/heartbeater-target}"
./scripts/ensure-build-deps.sh
cargo build --release -q -p heartbeater-bench
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
"$CARGO_TARGET_DIR/release/heartbeater-bench" --scenario load --json "$@" | tee "$out"
python3 - "$out" "$@" <<'PY'
import json, sys
rows = {r["metric"]: r["value"] for r in map(json.loads, open(sys.argv[1])) if r["scenario"] == "load"}
failed = []
for metric in ("heartbeat_errors", "registry_errors", "false_downs"):
    if rows.get(metric) != 0:
        failed.append(f"{metric} = {rows.get(metric)}, expected 0")
before, after = rows["rss_before_mib"], rows["rss_after_mib"]
first, second = rows["rss_first_half_max_mib"], rows["rss_second_half_max_mib"]
quick = "--quick" in sys.argv[2:]
if quick:
    print("load: --quick is too short to judge memory (RocksDB's memtables are still filling); the 60 s run checks it")
elif second > first * 1.10:
    failed.append(f"memory still growing: peak {first} MiB in the first half, {second} MiB in the second")
print(f"load: {rows['heartbeat_calls_per_s']:.0f} Heartbeat calls/s, "
      f"{rows['registry_changes_per_s']:.0f} registry changes/s, "
      f"errors {rows['heartbeat_errors']:.0f}+{rows['registry_errors']:.0f}, "
      f"false downs {rows['false_downs']:.0f}, RSS {before} MiB after warm-up, "
      f"peak {first} / {second} MiB (first / second half), {after} MiB after")
if failed:
    print("load: FAILED: " + "; ".join(failed), file=sys.stderr)
    sys.exit(1)
print("load: passed")
PY
