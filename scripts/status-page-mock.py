#!/usr/bin/env python3
"""A stand-in for a Heartbeater node's HTTP side, for working on the status page
(crates/heartbeater-cli/src/http/status.html) without building the node.

  status-page-mock.py demo [--http-listen HOST:PORT]
      Serves the page with made-up peers, events and topics (some with markup
      in their names, to see that nothing from the API is interpreted).

  status-page-mock.py serve --listen HOST:PORT --http-listen HOST:PORT [--json] [--in-memory]
  status-page-mock.py register --server HOST:PORT --peer-id ID --peer HOST:PORT --freq 100ms
      Mimic `heartbeater serve` and `heartbeater register` closely enough for
      scripts/status-page-check.sh to run against them (HEARTBEATER_BIN=this
      file): each mock node answers pings on --listen and pings the peers
      registered with it every --freq over HTTP, counting misses the way the
      node does (3 misses: UNREACHABLE, a reply from another identity: not an
      acknowledgement).

The page is read from disk at every request, so an edit shows on reload.
Standard library only.
"""

import argparse
import json
import os
import queue
import random
import re
import sys
import threading
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "heartbeater-cli", "src", "http",
                    "status.html")


def host_port(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def duration_millis(text):
    m = re.fullmatch(r"(\d+)(ms|s|m)", text)
    if not m:
        raise argparse.ArgumentTypeError("a duration such as 100ms or 2s")
    return int(m.group(1)) * {"ms": 1, "s": 1000, "m": 60000}[m.group(2)]


class Node:
    """The state the HTTP API reports, and the live event stream."""

    def __init__(self, epoch=1):
        self.identity = str(uuid.uuid4())
        self.epoch = epoch
        self.lock = threading.Lock()
        self.peers = {}
        self.quarantined = []
        self.topics = []
        self.recent = []
        self.listeners = []

    def emit(self, kind, peer_id, state, epoch=None, previous_epoch=None, observed_id=None):
        now = time.time()
        event = {
            "event": kind, "peer_id": peer_id, "state": state, "epoch": epoch,
            "previous_epoch": previous_epoch, "observed_id": observed_id,
            "timestamp": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "timestamp_micros": int(now * 1_000_000),
        }
        with self.lock:
            self.recent = (self.recent + [event])[-100:]
            for q in self.listeners:
                q.put(event)

    def peers_json(self):
        with self.lock:
            return {"identity": self.identity, "epoch": self.epoch,
                    "peers": [dict(p) for p in self.peers.values()], "quarantined": list(self.quarantined)}

    def topics_json(self):
        with self.lock:
            return {"topics": [dict(t) for t in self.topics]}


def api_handler(node):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def send(self, status, body, ctype):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            path = self.path.split("?")[0]
            if path == "/":
                with open(PAGE, "rb") as f:
                    self.send(200, f.read(), "text/html; charset=utf-8")
            elif path == "/api/peers":
                self.send(200, json.dumps(node.peers_json()).encode(), "application/json")
            elif path == "/api/topics":
                self.send(200, json.dumps(node.topics_json()).encode(), "application/json")
            elif path == "/api/events":
                self.events()
            else:
                self.send(404, b"not found\n", "text/plain")

        def events(self):
            q = queue.Queue()
            with node.lock:
                replay = list(node.recent)
                node.listeners.append(q)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Accel-Buffering", "no")
            self.end_headers()
            self.close_connection = True
            try:
                self.wfile.write(b"retry: 1000\n\n")
                for event in replay:
                    self.wfile.write(b"event: peer\ndata: " + json.dumps(event).encode() + b"\n\n")
                self.wfile.flush()
                while True:
                    try:
                        event = q.get(timeout=15)
                        self.wfile.write(b"event: peer\ndata: " + json.dumps(event).encode() + b"\n\n")
                    except queue.Empty:
                        self.wfile.write(b": keep-alive\n\n")
                    self.wfile.flush()
            except OSError:
                pass
            finally:
                with node.lock:
                    node.listeners.remove(q)

    return Handler


def start_http(addr, handler):
    server = ThreadingHTTPServer(addr, handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# ---- demo ----------------------------------------------------------------

def demo(args):
    node = Node(epoch=3)
    base = [("node-b", "127.0.0.1", 8182, "ALIVE", 2, "count", 350),
            ("node-c", "10.0.4.17", 8181, "ALIVE", 7, "phi", 2400),
            ("node-d", "fe80::1", 8181, "UNREACHABLE", 1, "count", None),
            ("node-e", "10.0.4.19", 8181, "UNKNOWN", None, "count", None),
            ("<img src=x onerror=alert(1)>", "<b>host</b>", 9, "ALIVE", 1, "count", 18700)]
    for pid, host, port, state, epoch, det, rtt in base:
        node.peers[pid] = {"peer_id": pid, "host": host, "port": port, "state": state, "epoch": epoch,
                           "heartbeats_sent": 0, "heartbeats_acked": 0, "last_rtt_micros": rtt,
                           "heartbeat_freq_millis": 100 if det == "count" else 1000, "timeout_millis": 100,
                           "max_missed": 3, "missed": 0 if state == "ALIVE" else 3, "detector": det}
    # Registered under an id another node does not have: it answers as itself.
    node.peers["node-e"]["answers_as"] = "0b6c7a1e-3d7f-4a7e-9d1c-5e2f8a9b0c1d"
    node.quarantined = [{"peer_id": "legacy-7", "reason": "stored record unreadable: <truncated>"}]
    node.topics = [{"topic": "orders", "subscribers": [node.identity, "6f1c0d5e-0000-4000-8000-00000000000b"],
                    "heartbeats_active": True, "heartbeats_sent": 0, "connected": [node.identity]},
                   {"topic": "<script>alert(2)</script>", "subscribers": [], "heartbeats_active": False,
                    "heartbeats_sent": 0, "connected": []}]
    for pid, _, _, state, epoch, _, _ in base:
        node.emit("Registered", pid, "UNKNOWN", None)
        if state != "UNKNOWN":
            node.emit("PeerUp", pid, "ALIVE", epoch)
    node.emit("PeerDown", "node-d", "UNREACHABLE", 1)
    node.emit("IdentityMismatch", "node-e", "UNKNOWN", None, observed_id="0b6c7a1e-3d7f-4a7e-9d1c-5e2f8a9b0c1d")
    start_http(host_port(args.http_listen), api_handler(node))
    print(f"demo status page on http://{args.http_listen}/", flush=True)
    tick = 0
    while True:
        time.sleep(0.1)
        tick += 1
        with node.lock:
            for p in node.peers.values():
                p["heartbeats_sent"] += 1
                if p["state"] == "ALIVE":
                    p["heartbeats_acked"] += 1
                    base_rtt = {"node-b": 350, "node-c": 2400}.get(p["peer_id"], 18700)
                    p["last_rtt_micros"] = int(base_rtt * random.uniform(0.7, 1.5))
            node.topics[0]["heartbeats_sent"] += 1
        if tick % 150 == 0:  # node-c restarts every 15 s
            c = node.peers["node-c"]
            c["epoch"] += 1
            node.emit("Restarted", "node-c", "ALIVE", c["epoch"], c["epoch"] - 1)


# ---- serve / register: enough of a node for status-page-check.sh ------------

def serve(args):
    node = Node(epoch=1)

    class Control(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def reply(self, status, obj):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.reply(200, {"identity": node.identity, "epoch": node.epoch})

        def do_POST(self):
            spec = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            with node.lock:
                updated = spec["peer_id"] in node.peers
                node.peers[spec["peer_id"]] = {
                    "peer_id": spec["peer_id"], "host": spec["host"], "port": spec["port"], "state": "UNKNOWN",
                    "epoch": None, "heartbeats_sent": 0, "heartbeats_acked": 0, "last_rtt_micros": None,
                    "heartbeat_freq_millis": spec["freq"], "timeout_millis": spec["freq"], "max_missed": 3,
                    "missed": 0, "detector": "count"}
            if not updated:
                node.emit("Registered", spec["peer_id"], "UNKNOWN")
                threading.Thread(target=heartbeat, args=(node, spec["peer_id"]), daemon=True).start()
            self.reply(200, {"updated": updated, "server_id": node.identity, "server_epoch": node.epoch})

    control = start_http(host_port(args.listen), Control)
    http = start_http(host_port(args.http_listen), api_handler(node))
    listen = "%s:%d" % control.server_address[:2]
    http_listen = "%s:%d" % http.server_address[:2]
    if args.json:
        print(json.dumps({"event": "started", "listen": listen, "http_listen": http_listen,
                          "identity": node.identity, "epoch": node.epoch, "data_dir": None, "peers": 0}), flush=True)
    else:
        print(f"mock node started\n  listen    {listen}\n  http      {http_listen}\n  identity  {node.identity}",
              flush=True)
    while True:
        time.sleep(3600)


def heartbeat(node, peer_id):
    mismatch = False
    while True:
        with node.lock:
            p = node.peers.get(peer_id)
            if p is None:
                return
            url, freq = "http://%s:%d/ping" % (p["host"], p["port"]), p["heartbeat_freq_millis"] / 1000
            p["heartbeats_sent"] += 1
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=freq) as r:
                answer = json.loads(r.read())
            rtt = time.monotonic() - t0
        except (OSError, ValueError):
            answer, rtt = None, None
        events = []
        with node.lock:
            if answer is not None and answer["identity"] != peer_id:
                if not mismatch:
                    events.append(("IdentityMismatch", p["state"], p["epoch"], None, answer["identity"]))
                p["answers_as"] = answer["identity"]
                mismatch, answer = True, None
            if answer is None:
                p["missed"] += 1
                if p["missed"] >= p["max_missed"] and p["state"] != "UNREACHABLE":
                    p["state"] = "UNREACHABLE"
                    events.append(("PeerDown", "UNREACHABLE", p["epoch"], None, None))
            else:
                mismatch = False
                p["answers_as"] = None
                previous, p["epoch"] = p["epoch"], answer["epoch"]
                p["missed"], p["last_rtt_micros"] = 0, int(rtt * 1_000_000)
                p["heartbeats_acked"] += 1
                if previous is not None and answer["epoch"] > previous:
                    events.append(("Restarted", "ALIVE", p["epoch"], previous, None))
                if p["state"] != "ALIVE":
                    p["state"] = "ALIVE"
                    events.append(("PeerUp", "ALIVE", p["epoch"], None, None))
        for kind, state, epoch, prev, observed in events:
            node.emit(kind, peer_id, state, epoch, prev, observed)
        time.sleep(max(0.0, freq - (time.monotonic() - t0)))


def register(args):
    host, port = host_port(args.peer)
    body = json.dumps({"peer_id": args.peer_id, "host": host, "port": port, "freq": args.freq}).encode()
    request = urllib.request.Request("http://%s/register" % args.server, body,
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as r:
        answer = json.loads(r.read())
    print(json.dumps({"event": "updated" if answer["updated"] else "registered", "peer_id": args.peer_id,
                      "server_id": answer["server_id"], "server_epoch": answer["server_epoch"]}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    d = sub.add_parser("demo")
    d.add_argument("--http-listen", default="127.0.0.1:8080")
    s = sub.add_parser("serve")
    s.add_argument("--listen", default="127.0.0.1:8181")
    s.add_argument("--http-listen", default="127.0.0.1:0")
    s.add_argument("--in-memory", action="store_true")
    s.add_argument("--json", action="store_true")
    r = sub.add_parser("register")
    r.add_argument("--server", default="127.0.0.1:8181")
    r.add_argument("--peer-id", required=True)
    r.add_argument("--peer", required=True)
    r.add_argument("--freq", type=duration_millis, required=True)
    r.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        {"serve": serve, "register": register}.get(args.command, demo)(
            args if args.command else d.parse_args([]))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
