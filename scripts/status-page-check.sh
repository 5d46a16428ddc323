#!/usr/bin/env bash
# Checks the node's status page (GET / on --http-listen) in headless Chromium
# against two real nodes: node A monitors node B, the page shows B ALIVE; B is
# killed, the page shows B UNREACHABLE and a PeerDown event.
#
#   HEARTBEATER_BIN       the heartbeater binary [${CARGO_TARGET_DIR:-target}/debug/heartbeater]
#   SCREENSHOT            where the screenshot of the page goes [docs/status-page.png]
#   HEARTBEATER_BROWSER   `require`: fail, rather than skip, without Chromium
#
# The page is read with plain `chromium --headless --dump-dom` and
# --virtual-time-budget: Chromium fast-forwards the page's timers (its 1 s
# polls) and dumps the DOM once the budget is spent. Virtual time stands still
# while the page has a request open, which is why the page reads its
# never-ending event stream in a worker.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${HEARTBEATER_BIN:-${CARGO_TARGET_DIR:-target}/debug/heartbeater}"
shot="${SCREENSHOT:-docs/status-page.png}"

find_chromium() {
    local c
    for c in chromium chromium-browser; do
        if command -v "$c" >/dev/null 2>&1; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}
chrome=$(find_chromium || true)
if [ -z "$chrome" ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "status page check: installing chromium"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 || true
    chrome=$(find_chromium || true)
fi
if [ -z "$chrome" ]; then
    if [ "${HEARTBEATER_BROWSER:-}" = require ]; then
        echo "status page check: FAILED: no chromium (HEARTBEATER_BROWSER=require)" >&2
        exit 1
    fi
    echo "SKIPPED status page check: no chromium"
    exit 0
fi

work=$(mktemp -d)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
    echo "status page check: FAILED: $*" >&2
    local f
    for f in "$work"/*.err; do
        [ -s "$f" ] || continue
        echo "--- last lines of $(basename "$f")" >&2
        # Chromium's complaints about a missing D-Bus are noise here.
        grep -v -e 'dbus/' -e 'zygote_communication' "$f" | tail -n 15 >&2 || true
    done
    exit 1
}

[ -x "$bin" ] || fail "no heartbeater binary at $bin (build it first, or set HEARTBEATER_BIN)"

# Started in this shell (not in a command substitution) so that their pids
# are recorded and the EXIT trap stops them; output goes to files.
start_node() {
    "$bin" serve --in-memory --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --json \
        >"$work/$1.out" 2>"$work/$1.err" </dev/null &
    pids+=($!)
}
first_line() {
    local _
    for _ in $(seq 100); do
        [ -s "$work/$1.out" ] && break
        sleep 0.1
    done
    [ -s "$work/$1.out" ] || fail "node $1 printed no started line within 10 s"
    head -n1 "$work/$1.out"
}
field() {
    python3 -c 'import json, sys
v = json.loads(sys.argv[1]).get(sys.argv[2])
sys.exit(1) if v is None else print(v)' "$1" "$2" 2>/dev/null \
        || fail "no \"$2\" in the started line: $1"
}

start_node a
pid_a=${pids[-1]}
start_node b
pid_b=${pids[-1]}
line_a=$(first_line a)
line_b=$(first_line b)
listen_a=$(field "$line_a" listen)
http_a=$(field "$line_a" http_listen)
listen_b=$(field "$line_b" listen)
id_b=$(field "$line_b" identity)
url="http://$http_a/"
echo "status page check: node A $listen_a (page $url), node B $listen_b ($id_b)"

# A peer is acknowledged only by a reply carrying the identity it was
# registered with, so B is registered under its own identity.
"$bin" register --server "$listen_a" --peer-id "$id_b" --peer "$listen_b" --freq 100ms \
    >"$work/register.out" 2>"$work/register.err" </dev/null \
    || fail "register B on A: $(cat "$work/register.err")"

browser() {
    timeout -k 5 60 "$chrome" --headless --no-sandbox --disable-gpu --disable-background-networking \
        --user-data-dir="$work/profile" --virtual-time-budget=5000 "$@" "$url" 2>>"$work/chromium.err"
}

# What the DOM in $work/dom.html says: `ready`, `peer ID STATE`, `event KIND ID`
# (any number of them); prints what is missing and fails.
check_dom() {
    python3 - "$work/dom.html" "$@" <<'EOF'
import sys
from html.parser import HTMLParser

class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ready, self.peers, self.events = None, {}, set()
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "body":
            self.ready = a.get("data-ready")
        elif tag == "tr" and "peer" in classes:
            self.peers[a.get("data-peer-id")] = a.get("data-state")
        elif tag == "li" and "event" in classes:
            self.events.add((a.get("data-kind"), a.get("data-peer-id")))

page = Page()
with open(sys.argv[1], encoding="utf-8") as f:
    page.feed(f.read())
args, missing = sys.argv[2:], []
while args:
    what = args.pop(0)
    if what == "ready":
        if page.ready != "1":
            missing.append(f'<body data-ready="1"> (data-ready is {page.ready!r})')
    elif what == "peer":
        peer, state = args.pop(0), args.pop(0)
        if page.peers.get(peer) != state:
            missing.append(f"peer {peer} {state} (the row says {page.peers.get(peer)!r}; rows: {page.peers})")
    elif what == "event":
        kind, peer = args.pop(0), args.pop(0)
        if (kind, peer) not in page.events:
            missing.append(f"event {kind} for {peer} ({len(page.events)} events listed)")
for m in missing:
    print("  missing: " + m)
sys.exit(1 if missing else 0)
EOF
}

# Dumps the page until the conditions hold (a few tries: the first one may come
# before the first heartbeat is answered).
expect() {
    local label=$1 try rc
    shift
    for try in 1 2 3; do
        rc=0
        browser --dump-dom >"$work/dom.html" || rc=$?
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            fail "$label: chromium did not finish within 60 s (virtual time stalled: does the page keep a request open?)"
        fi
        [ "$rc" -eq 0 ] || fail "$label: chromium exited with $rc"
        if check_dom "$@" >"$work/check.txt"; then
            echo "status page check: $label: ok"
            return 0
        fi
        sleep 1
    done
    cat "$work/check.txt" >&2
    local keep="${TMPDIR:-/tmp}/status-page-dom.html"
    cp "$work/dom.html" "$keep" && echo "  the page as last dumped: $keep" >&2
    fail "$label: the page does not show it after $try tries"
}

expect "B alive" ready peer "$id_b" ALIVE

mkdir -p "$(dirname "$shot")"
browser --hide-scrollbars --window-size=1280,800 --screenshot="$shot" >/dev/null \
    || fail "chromium could not take the screenshot"
[ -s "$shot" ] || fail "no screenshot at $shot"
echo "status page check: screenshot in $shot"

kill -9 "$pid_b"
wait "$pid_b" 2>/dev/null || true
pids=("$pid_a")
sleep 1.5
expect "B killed" ready peer "$id_b" UNREACHABLE event PeerDown "$id_b"

kill "$pid_a"
wait "$pid_a" 2>/dev/null || true
pids=()
echo "status page check: passed"
