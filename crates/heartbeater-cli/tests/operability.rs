//! What an operator touches: the HTTP listener (metrics, API, event
//! stream, health), the settings' precedence and errors, completions and
//! the demo, through the real binary.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// One HTTP/1.1 GET; returns the status code and the body. Reads until the
/// server closes, or for at most `read_for` (an event stream never closes).
fn get(addr: &str, path: &str, headers: &str, read_for: Duration) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the HTTP listener");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\r\n"
    )
    .unwrap();
    let deadline = Instant::now() + read_for;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) => continue,
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn get_json(addr: &str, path: &str) -> Value {
    let (status, body) = get(addr, path, "", Duration::from_secs(5));
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body:?}"))
}

fn http_node(extra: &[&str]) -> (Serve, String) {
    let mut args = vec!["--in-memory", "--http-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let node = Serve::start(&args);
    let http = node.started["http_listen"]
        .as_str()
        .expect("http_listen in the start line")
        .to_owned();
    (node, http)
}

/// A monitor with an HTTP listener, and a peer it heartbeats every 100 ms.
fn monitoring(extra: &[&str]) -> (Serve, String, Serve) {
    let (monitor, http) = http_node(extra);
    let peer = Serve::start(&["--in-memory"]);
    run_register(
        bin(),
        &monitor.addr,
        &peer.identity,
        &peer.addr,
        &["--freq", "100ms"],
    );
    (monitor, http, peer)
}

fn wait_for_state(http: &str, peer: &str, state: &str) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let peers = get_json(http, "/api/peers");
        if let Some(p) = peers["peers"].as_array().and_then(|ps| {
            ps.iter()
                .find(|p| p["peer_id"] == peer && p["state"] == state)
        }) {
            return p.clone();
        }
        assert!(Instant::now() < deadline, "{peer} never {state}: {peers}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `promtool check metrics` on `text` when promtool is installed (Debian's
/// `prometheus`); `HEARTBEATER_PROMTOOL=require` makes its absence a failure.
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert_ne!(
                std::env::var("HEARTBEATER_PROMTOOL").as_deref(),
                Ok("require"),
                "promtool: {e}"
            );
            eprintln!("SKIPPED promtool check: {e}");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_http_listener_shows_a_peer_alive_then_down_in_api_events_and_metrics() {
    let (_monitor, http, mut peer) = monitoring(&[]);
    let alive = wait_for_state(&http, &peer.identity, "ALIVE");
    assert_eq!(alive["max_missed"], 3);
    assert!(alive["last_rtt_micros"].as_u64().is_some());

    let (status, metrics) = get(&http, "/metrics", "", Duration::from_secs(5));
    assert_eq!(status, 200);
    let peer_up = format!("heartbeater_peer_up{{peer=\"{}\"}} 1", peer.identity);
    assert!(metrics.contains(&peer_up), "{metrics}");
    assert!(metrics.contains("heartbeater_peers{state=\"alive\"} 1"));
    assert!(metrics.contains("heartbeater_transitions_total{kind=\"peer_up\"} 1"));
    assert!(metrics.contains("heartbeater_heartbeat_rtt_seconds_bucket{le=\"+Inf\"}"));
    assert!(metrics.contains("heartbeater_metrics_peer_series_suppressed 0"));
    promtool_check(&metrics);
    let (_, openmetrics) = get(
        &http,
        "/metrics",
        "Accept: application/openmetrics-text; version=1.0.0\r\n",
        Duration::from_secs(5),
    );
    assert!(openmetrics.trim_end().ends_with("# EOF"), "{openmetrics}");

    peer.child.kill().unwrap();
    let _ = peer.child.wait();
    wait_for_state(&http, &peer.identity, "UNREACHABLE");
    // A new event stream replays what happened, in order.
    let (status, stream) = get(&http, "/api/events", "", Duration::from_secs(1));
    assert_eq!(status, 200);
    let kinds: Vec<String> = stream
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|e| e["peer_id"] == peer.identity.as_str())
        .map(|e| e["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(kinds, ["Registered", "PeerUp", "PeerDown"], "{stream}");
    let (_, metrics) = get(&http, "/metrics", "", Duration::from_secs(5));
    assert!(metrics.contains("heartbeater_transitions_total{kind=\"peer_down\"} 1"));
    assert!(
        metrics.contains(&peer_up.replace("} 1", "} 0")),
        "{metrics}"
    );
    promtool_check(&metrics);

    assert_eq!(get(&http, "/healthz", "", Duration::from_secs(5)).0, 200);
    let ready = get_json(&http, "/readyz");
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["peers"]["unreachable"], 1);
    assert_eq!(
        get_json(&http, "/api/topics")["topics"],
        serde_json::json!([])
    );
    assert_eq!(get(&http, "/nowhere", "", Duration::from_secs(5)).0, 404);
    let (status, page) = get(&http, "/", "", Duration::from_secs(5));
    assert_eq!(status, 200);
    assert!(page.contains("data-ready"));
    // Every asset is in the page: nothing is fetched from anywhere else.
    for external in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(!page.contains(external), "{external}");
    }
}

#[test]
fn past_the_cardinality_guard_there_are_no_per_peer_series() {
    let (_monitor, http, peer) = monitoring(&["--metrics-peer-labels", "0"]);
    wait_for_state(&http, &peer.identity, "ALIVE");
    let (_, metrics) = get(&http, "/metrics", "", Duration::from_secs(5));
    assert!(metrics.contains("heartbeater_metrics_peer_series_suppressed 1"));
    assert!(!metrics.contains(&peer.identity), "{metrics}");
    assert!(metrics.contains("heartbeater_peers{state=\"alive\"} 1"));
    promtool_check(&metrics);
}

fn print_config(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = bin();
    cmd.env_remove("HEARTBEATER_HTTP_LISTEN")
        .args(["serve", "--print-config"])
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn flags_win_over_environment_which_wins_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hb.toml");
    std::fs::write(
        &file,
        "max_peers = 10\nmax_watchers = 20\nlisten = \"127.0.0.1:7000\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let (ok, out, err) = print_config(
        &["--config", file, "--max-peers", "1"],
        &[
            ("HEARTBEATER_MAX_PEERS", "2"),
            ("HEARTBEATER_MAX_WATCHERS", "3"),
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("max_peers = 1  # flag --max-peers"), "{out}");
    assert!(out.contains("max_watchers = 3  # environment HEARTBEATER_MAX_WATCHERS"));
    assert!(out.contains("listen = \"127.0.0.1:7000\"  # config file"));
    assert!(out.contains("http_listen = \"127.0.0.1:8000\"  # default: listen port + 1000"));
    assert!(out.contains("max_request_bytes = 4194304  # default"));
    // The config file can come from the environment too.
    let (ok, out, _) = print_config(&[], &[("HEARTBEATER_CONFIG", file)]);
    assert!(ok && out.contains("max_peers = 10  # config file"), "{out}");
}

/// Arguments, environment, and what stderr must say.
type ErrorCase<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, &'a str);

#[test]
fn every_settings_error_names_its_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let cases: Vec<ErrorCase> = vec![
        (
            vec!["--config".into(), write("a.toml", "max_peer = 3\n")],
            vec![],
            "unknown key \"max_peer\" (did you mean max_peers?)",
        ),
        (
            vec![
                "--config".into(),
                write("b.toml", "pause_threshold = \"soon\"\n"),
            ],
            vec![],
            "b.toml: pause_threshold: ",
        ),
        (
            vec!["--config".into(), write("c.toml", "udp = \"maybe\"\n")],
            vec![],
            "c.toml: udp: \"maybe\" is not true or false",
        ),
        (
            vec!["--config".into(), write("d.toml", "[listen]\n")],
            vec![],
            "d.toml: listen: expected HOST:PORT, found a table",
        ),
        (
            vec!["--config".into(), write("e.toml", "listen = \n")],
            vec![],
            "e.toml: not valid TOML",
        ),
        (
            vec![],
            vec![("HEARTBEATER_MAX_WATCHERS", "lots")],
            "environment variable HEARTBEATER_MAX_WATCHERS: \"lots\" is not a whole number",
        ),
        (
            vec![],
            vec![("HEARTBEATER_LOG_FORMAT", "xml")],
            "environment variable HEARTBEATER_LOG_FORMAT: \"xml\": expected text or json",
        ),
        (
            vec!["--config".into(), "/nonexistent/hb.toml".into()],
            vec![],
            "cannot read config file /nonexistent/hb.toml",
        ),
        (
            vec!["--in-memory".into(), "--data-dir".into(), "/tmp/x".into()],
            vec![],
            "--in-memory and --data-dir contradict each other",
        ),
        (
            vec!["--no-udp".into(), "--udp".into(), "true".into()],
            vec![],
            "--no-udp and --udp true contradict each other",
        ),
    ];
    for (args, env, expected) in cases {
        let mut cmd = bin();
        cmd.arg("serve").args(&args);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
        assert!(err.contains(expected), "{args:?} {env:?}: {err}");
    }
    // A bad flag value is clap's usage error, naming the flag.
    let out = bin().args(["serve", "--max-peers", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-peers"));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut child = bin()
        .args([
            "serve",
            "--in-memory",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    let first = text.lines().next().unwrap_or_else(|| panic!("no log line"));
    let line: Value = serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["fields"]["message"], "node started");
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef heartbeater"),
        ("fish", "complete -c heartbeater"),
    ] {
        let out = bin().args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}");
        assert!(
            text.contains("print-config"),
            "{shell}: serve's flags are included"
        );
    }
}

#[test]
fn the_demo_sees_the_kill_within_the_bound_and_the_restart() {
    let out = bin()
        .args(["demo", "--nodes", "4", "--settle", "1s"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("detected node-3 DOWN").count(), 3, "{text}");
    assert_eq!(
        text.matches("sees node-3  RESTARTED (epoch 1 -> 2)")
            .count(),
        3,
        "{text}"
    );
    assert!(text.contains("OK: every node detected the kill"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "no escape codes in a pipe: {text}"
    );
}

/// Opens `/api/events` and reads its status line; the stream stays open
/// while the returned socket lives.
fn open_events(addr: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the HTTP listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET /api/events HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    (stream, head)
}

#[test]
fn one_client_cannot_take_every_event_stream() {
    let (_node, http) = http_node(&[]);
    let held: Vec<_> = (0..8).map(|_| open_events(&http)).collect();
    for (_, head) in &held {
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    let (_, refused) = open_events(&http);
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        refused.contains("this address has 8 event streams open"),
        "{refused}"
    );
    // A closed stream gives its place back.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_s, head) = open_events(&http);
        if head.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "no place given back: {head}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether a new connection to `http` gets an answer to `GET /healthz`.
fn served(http: &str) -> bool {
    let Ok(mut c) = TcpStream::connect(http) else {
        return false;
    };
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if write!(
        c,
        "GET /healthz HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(c.read(&mut buf), Ok(n) if buf[..n].starts_with(b"HTTP/1.1 200"))
}

#[test]
fn one_client_cannot_hold_every_http_connection() {
    let (_node, http) = http_node(&[]);
    assert!(served(&http));
    // A client that opens connections and sends nothing on them.
    let mut held: Vec<TcpStream> = (0..32)
        .map(|_| TcpStream::connect(&http).expect("connect"))
        .collect();
    // The next one is closed as soon as it is accepted.
    assert!(!served(&http), "served past its share");
    // Its held connections still work, and closing one gives room back.
    let mut first = held.remove(0);
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(first, "GET /healthz HTTP/1.1\r\nHost: {http}\r\n\r\n").unwrap();
    let mut buf = [0u8; 64];
    let n = first.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !served(&http) {
        assert!(Instant::now() < deadline, "no room given back");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(held);
}
