//! The `heartbeater` binary against real processes: what a new user does
//! from a terminal, including `kill -9`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(15);

fn bin() -> Command {
    // No HTTP listener unless a test asks for one (a flag wins over
    // this): many nodes run at once, some on fixed ports.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_heartbeater"));
    cmd.env("HEARTBEATER_HTTP_LISTEN", "off");
    cmd
}

/// A `heartbeater serve --json` child; killed (SIGKILL) on drop.
struct Node {
    proc: JsonChild,
    addr: String,
    identity: String,
    epoch: u64,
}

impl Node {
    fn start(listen: &str, data_dir: &Path) -> Node {
        let dir = data_dir.to_str().expect("utf-8 path");
        let proc = JsonChild::spawn(
            &["serve", "--json", "--listen", listen, "--data-dir", dir],
            Stdio::null(),
        );
        let started = proc.expect("started");
        Node {
            addr: started["listen"].as_str().unwrap().to_owned(),
            identity: started["identity"].as_str().unwrap().to_owned(),
            epoch: started["epoch"].as_u64().unwrap(),
            proc,
        }
    }

    fn port(&self) -> &str {
        self.addr.rsplit_once(':').unwrap().1
    }

    fn kill9(&mut self) {
        self.proc.child.kill().expect("SIGKILL");
        self.proc.child.wait().expect("reap");
    }

    /// Waits for a JSON line with `event == name` about `peer_id`.
    fn expect_event(&self, name: &str, peer_id: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self
                .proc
                .next(PATIENCE.saturating_sub(start.elapsed()))
                .unwrap_or_else(|| panic!("no {name} event for {peer_id}"));
            if v["event"] == name && v["peer_id"] == peer_id {
                return v;
            }
        }
    }
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run heartbeater")
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "heartbeater {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn peer_state(server: &str, peer_id: &str) -> Option<String> {
    let out = run(&["peers", "--json", "--server", server]);
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["peer_id"] == peer_id)
        .map(|v| v["state"].as_str().unwrap_or_default().to_owned())
}

fn wait_for_state(server: &str, peer_id: &str, state: &str) -> Duration {
    let start = Instant::now();
    loop {
        if peer_state(server, peer_id).as_deref() == Some(state) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < PATIENCE,
            "{peer_id} never became {state} on {server}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn register_detect_a_kill_see_the_restart_and_survive_a_monitor_kill() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut monitor = Node::start("127.0.0.1:0", dirs.0.path());
    let mut peer = Node::start("127.0.0.1:0", dirs.1.path());
    assert_eq!((monitor.epoch, peer.epoch), (1, 1));

    let out = ok(&[
        "register",
        "--server",
        &monitor.addr,
        "--peer-id",
        &peer.identity,
        "--peer",
        &peer.addr,
        "--freq",
        "100ms",
    ]);
    assert!(out.starts_with("registered peer"), "{out}");
    monitor.expect_event("Registered", &peer.identity);
    monitor.expect_event("PeerUp", &peer.identity);
    wait_for_state(&monitor.addr, &peer.identity, "ALIVE");
    let table = ok(&["peers", "--server", &monitor.addr]);
    assert!(
        table.contains("ALIVE") && table.contains(&peer.identity),
        "{table}"
    );

    // kill -9 the peer: UNREACHABLE within 3 x 100 ms + 100 ms (plus slack
    // for process scheduling and the polling itself).
    peer.kill9();
    let killed = Instant::now();
    let down = monitor.expect_event("PeerDown", &peer.identity);
    assert_eq!(down["state"], "UNREACHABLE");
    let took = killed.elapsed();
    assert!(
        took < Duration::from_millis(400 + 1000),
        "PeerDown after {took:?}"
    );
    wait_for_state(&monitor.addr, &peer.identity, "UNREACHABLE");

    // Restart the peer on its data directory and port: Restarted, then ALIVE.
    let listen = format!("127.0.0.1:{}", peer.port());
    let peer_again = Node::start(&listen, dirs.1.path());
    assert_eq!(peer_again.identity, peer.identity);
    assert_eq!(peer_again.epoch, 2);
    let restarted = monitor.expect_event("Restarted", &peer.identity);
    assert_eq!(
        (
            restarted["previous_epoch"].as_u64(),
            restarted["epoch"].as_u64()
        ),
        (Some(1), Some(2))
    );
    monitor.expect_event("PeerUp", &peer.identity);

    // kill -9 the monitor: its restart keeps identity and registration,
    // with a higher epoch, and it heartbeats the peer again.
    monitor.kill9();
    let monitor_listen = format!("127.0.0.1:{}", monitor.port());
    let monitor_again = Node::start(&monitor_listen, dirs.0.path());
    assert_eq!(monitor_again.identity, monitor.identity);
    assert_eq!(monitor_again.epoch, 2);
    wait_for_state(&monitor_again.addr, &peer.identity, "ALIVE");
}

#[test]
fn watch_prints_restarted_when_a_peer_comes_back() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let monitor = Node::start("127.0.0.1:0", dirs.0.path());
    let mut peer = Node::start("127.0.0.1:0", dirs.1.path());
    ok(&[
        "register",
        "--server",
        &monitor.addr,
        "--peer-id",
        &peer.identity,
        "--peer",
        &peer.addr,
        "--freq",
        "50ms",
        "--max-missed",
        "2",
    ]);
    wait_for_state(&monitor.addr, &peer.identity, "ALIVE");

    let mut watch = bin()
        .args(["watch", "--server", &monitor.addr])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn watch");
    let (tx, rx) = mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Give the watch a moment to subscribe before the kill.
    std::thread::sleep(Duration::from_millis(300));
    peer.kill9();
    let listen = format!("127.0.0.1:{}", peer.port());
    wait_for_state(&monitor.addr, &peer.identity, "UNREACHABLE");
    let _peer_again = Node::start(&listen, dirs.1.path());

    let mut seen = Vec::new();
    let start = Instant::now();
    while !seen.iter().any(|l: &String| l.contains("PeerUp")) {
        let line = rx
            .recv_timeout(PATIENCE.saturating_sub(start.elapsed()))
            .unwrap_or_else(|_| panic!("watch printed only {seen:#?}"));
        seen.push(line);
    }
    let _ = watch.kill();
    let _ = watch.wait();
    let kinds: Vec<&str> = seen
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(kinds, vec!["PeerDown", "Restarted", "PeerUp"], "{seen:#?}");
    assert!(
        seen[1].contains("epoch=2") && seen[1].contains("previous_epoch=1"),
        "{}",
        seen[1]
    );
}

#[test]
fn sigterm_stops_a_node_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start("127.0.0.1:0", dir.path());
    let status = Command::new("kill")
        .args(["-TERM", &node.proc.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    node.proc.expect("stopped");
    let exit = node.proc.child.wait().expect("wait");
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn a_port_taken_for_udp_is_named_and_no_udp_starts_anyway() {
    // A UDP port whose TCP twin is free (other tests' connections take
    // ephemeral TCP ports from the same range).
    let (_squatter, addr) = loop {
        let squatter = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = squatter.local_addr().unwrap();
        if std::net::TcpListener::bind(addr).is_ok() {
            break (squatter, addr.to_string());
        }
    };
    let out = run(&["serve", "--in-memory", "--listen", &addr]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("UDP {addr}")) && err.lines().count() == 1,
        "{err}"
    );

    let proc = JsonChild::spawn(
        &[
            "serve",
            "--json",
            "--in-memory",
            "--no-udp",
            "--listen",
            &addr,
        ],
        Stdio::null(),
    );
    let started = proc.expect("started");
    assert_eq!(started["listen"].as_str(), Some(addr.as_str()));
}

#[test]
fn start_failures_are_one_clear_line_and_exit_code_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["serve", "--listen", &addr, "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");

    let file = tempfile::NamedTempFile::new().unwrap();
    let out = bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(file.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&file.path().display().to_string()) && err.contains("not a directory"),
        "{err}"
    );

    let out = run(&[
        "register",
        "--server",
        "127.0.0.1:1",
        "--peer-id",
        "x",
        "--peer",
        "127.0.0.1:2",
        "--freq",
        "0ms",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a zero period is a usage error like any other"
    );
    let out = run(&["peers", "--server", "nonsense"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "argument errors are usage errors"
    );
}

#[test]
fn heartbeat_prints_identity_epoch_and_rtt() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start("127.0.0.1:0", dir.path());
    let out = ok(&["heartbeat", "--server", &node.addr]);
    assert!(
        out.contains(&node.identity) && out.contains("epoch 1") && out.contains("rtt"),
        "{out}"
    );
    let json: Value =
        serde_json::from_str(ok(&["heartbeat", "--json", "--server", &node.addr]).trim()).unwrap();
    assert_eq!(json["server_id"], node.identity.as_str());
    assert!(json["rtt_micros"].as_u64().unwrap() > 0);
}

/// A child whose stdout lines (JSON) arrive on a channel; killed on drop.
struct JsonChild {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl JsonChild {
    fn spawn(args: &[&str], stdin: Stdio) -> JsonChild {
        let mut child = bin()
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn heartbeater");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value =
                    serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        JsonChild { child, lines }
    }

    fn next(&self, within: Duration) -> Option<Value> {
        self.lines.recv_timeout(within).ok()
    }

    fn expect(&self, event: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self
                .next(PATIENCE.saturating_sub(start.elapsed()))
                .unwrap_or_else(|| panic!("no {event} line"));
            if v["event"] == event {
                return v;
            }
        }
    }
}

impl Drop for JsonChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn publish_and_subscribe_processes_and_a_killed_subscriber_disconnects_once() {
    use std::io::Write;
    let mut publisher = JsonChild::spawn(
        &[
            "publish",
            "--json",
            "--listen",
            "127.0.0.1:0",
            "--topic",
            "news",
            "--heartbeat-rate",
            "100ms",
        ],
        Stdio::piped(),
    );
    let started = publisher.expect("publishing");
    let addr = started["listen"].as_str().unwrap().to_owned();
    let subscribe = [
        "subscribe",
        "--json",
        "--publisher",
        addr.as_str(),
        "--topic",
        "news",
    ];
    let mut one = JsonChild::spawn(&subscribe, Stdio::null());
    let two = JsonChild::spawn(&subscribe, Stdio::null());
    let id_one = one.expect("subscribed")["client"]
        .as_str()
        .unwrap()
        .to_owned();
    let id_two = two.expect("subscribed")["client"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut connected = Vec::new();
    while connected.len() < 2 {
        let v = publisher.expect("connected");
        assert_eq!(v["topic"], "news");
        connected.push(v["client"].as_str().unwrap().to_owned());
    }
    connected.sort();
    let mut expected = vec![id_one.clone(), id_two.clone()];
    expected.sort();
    assert_eq!(connected, expected);

    let stdin = publisher.child.stdin.as_mut().unwrap();
    writeln!(stdin, "hello subscribers").unwrap();
    stdin.flush().unwrap();
    for sub in [&one, &two] {
        let m = sub.expect("message");
        assert_eq!(
            (m["topic"].as_str(), m["payload"].as_str()),
            (Some("news"), Some("hello subscribers"))
        );
    }

    // kill -9 one subscriber: exactly one disconnected, for it, within about
    // 3 x 100 ms + 100 ms (slack for process scheduling on a busy machine).
    one.child.kill().unwrap();
    one.child.wait().unwrap();
    let killed = Instant::now();
    let v = publisher.expect("disconnected");
    let took = killed.elapsed();
    assert_eq!(v["client"].as_str(), Some(id_one.as_str()));
    assert!(
        took < Duration::from_millis(400 + 1000),
        "disconnected after {took:?}"
    );
    // Nothing more: no second report for it, none for the live subscriber.
    let quiet = publisher.next(Duration::from_millis(1500));
    assert!(quiet.is_none(), "unexpected line {quiet:?}");
    drop(two);
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig}");
}

#[test]
fn a_frozen_subscriber_neither_stalls_the_other_nor_grows_the_publisher() {
    use std::io::Write;
    const MESSAGES: usize = 20_000;
    let mut publisher = JsonChild::spawn(
        &[
            "publish",
            "--json",
            "--listen",
            "127.0.0.1:0",
            "--topic",
            "bulk",
            "--heartbeat-rate",
            "100ms",
            // Answers trail the data by as much as the queues hold: a long
            // timeout and 1 s of silence before a disconnection keep a busy
            // subscriber connected.
            "--heartbeat-timeout",
            "2s",
            "--max-client-conn-checks",
            "10",
            "--stall-timeout",
            "1s",
        ],
        Stdio::piped(),
    );
    let addr = publisher.expect("publishing")["listen"]
        .as_str()
        .unwrap()
        .to_owned();
    let subscribe = [
        "subscribe",
        "--json",
        "--publisher",
        addr.as_str(),
        "--topic",
        "bulk",
    ];
    let frozen = JsonChild::spawn(&subscribe, Stdio::null());
    let healthy = JsonChild::spawn(&subscribe, Stdio::null());
    let frozen_id = frozen.expect("subscribed")["client"]
        .as_str()
        .unwrap()
        .to_owned();
    let healthy_id = healthy.expect("subscribed")["client"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut connected = Vec::new();
    while connected.len() < 2 {
        connected.push(
            publisher.expect("connected")["client"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    signal(&frozen.child, "-STOP");
    let pid = publisher.child.id();
    let rss_before = proc_kib(pid, "VmRSS");

    // 20,000 lines of 1 KiB, from a thread: the pipe pushes back whenever
    // the publisher waits.
    let line = |i: usize| format!("{i:06}:{}", "x".repeat(1024 - 7));
    let mut stdin = publisher.child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..MESSAGES {
            writeln!(stdin, "{}", line(i)).unwrap();
        }
        stdin.flush().unwrap();
        stdin // kept open: EOF is no reason for the publisher to stop
    });

    let start = Instant::now();
    let deadline = Duration::from_secs(60);
    let mut received = 0;
    while received < MESSAGES {
        let v = healthy
            .next(deadline.saturating_sub(start.elapsed()))
            .unwrap_or_else(|| panic!("the healthy subscriber got only {received} messages"));
        assert_ne!(
            v["event"], "subscribed",
            "the healthy subscriber was dropped"
        );
        if v["event"] == "message" {
            assert_eq!(
                v["payload"].as_str(),
                Some(line(received).as_str()),
                "message {received} out of order"
            );
            received += 1;
        }
    }
    let took = start.elapsed();
    let _stdin = writer.join().expect("writer");

    let gone = publisher.expect("disconnected");
    assert_eq!(gone["client"].as_str(), Some(frozen_id.as_str()));
    let rss_after = proc_kib(pid, "VmRSS");
    let hwm = proc_kib(pid, "VmHWM");
    eprintln!(
        "publisher VmRSS {rss_before} KiB before, {rss_after} KiB after, VmHWM {hwm} KiB; \
         {MESSAGES} messages in {took:?}"
    );
    // 20 MiB went through; a publisher that kept them for the frozen
    // subscriber would hold at least that much more than it started with.
    assert!(
        hwm < rss_before + 16 * 1024,
        "publisher peak {hwm} KiB, from {rss_before} KiB"
    );
    // The healthy one stayed connected all along.
    while let Some(v) = publisher.next(Duration::from_millis(300)) {
        assert!(
            !(v["event"] == "disconnected" && v["client"] == healthy_id.as_str()),
            "{v}"
        );
    }
    signal(&frozen.child, "-CONT");
    drop(frozen);
    drop(healthy);
}

#[test]
fn nodes_with_a_key_file_hear_each_other_and_reload_it_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("cluster.key");
    let old = "11".repeat(32);
    let new = "22".repeat(32);
    std::fs::write(&key_file, format!("# the cluster's key\n{old}\n")).unwrap();
    let keyed = |file: &Path| {
        let started = JsonChild::spawn(
            &[
                "serve",
                "--json",
                "--in-memory",
                "--listen",
                "127.0.0.1:0",
                "--cluster-key-file",
                file.to_str().unwrap(),
            ],
            Stdio::null(),
        );
        let line = started.expect("started");
        assert_eq!(line["cluster_keys"], true, "{line}");
        let addr = line["listen"].as_str().unwrap().to_owned();
        let identity = line["identity"].as_str().unwrap().to_owned();
        (started, addr, identity)
    };
    let (a, a_addr, _) = keyed(&key_file);
    let (_b, b_addr, b_id) = keyed(&key_file);
    ok(&[
        "register",
        "--server",
        &a_addr,
        "--peer-id",
        &b_id,
        "--peer",
        &b_addr,
        "--freq",
        "100ms",
    ]);
    wait_for_state(&a_addr, &b_id, "ALIVE");

    let hup = |child: &JsonChild| {
        let status = Command::new("kill")
            .args(["-HUP", &child.child.id().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(status.success());
    };
    std::fs::write(&key_file, format!("{old}\n{new}\n")).unwrap();
    hup(&a);
    let reloaded = a.expect("cluster_keys_reloaded");
    assert_eq!(reloaded["keys"], 2, "{reloaded}");
    // A broken file keeps the keys in use: the peer stays alive.
    std::fs::write(&key_file, "not hex\n").unwrap();
    hup(&a);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(peer_state(&a_addr, &b_id).as_deref(), Some("ALIVE"));

    // At start, a bad or missing key file stops `serve` naming the file.
    for contents in [None, Some("zz\n"), Some("00\n")] {
        let path = dir.path().join("bad.key");
        let _ = std::fs::remove_file(&path);
        if let Some(c) = contents {
            std::fs::write(&path, c).unwrap();
        }
        let out = bin()
            .args(["serve", "--in-memory", "--listen", "127.0.0.1:0"])
            .arg("--cluster-key-file")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("bad.key"), "{err}");
    }
}
