//! What the command line says when something is wrong or goes away, against
//! real processes: each failure named in the user's words first, durations
//! and numbers as people write them, and the long-running commands (`watch`,
//! `subscribe`) saying what they are doing and following their node or
//! publisher through a restart.

#[path = "../../heartbeater/tests/common/certs.rs"]
mod certs;
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{bin, Serve, PATIENCE};
use serde_json::Value;

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run heartbeater")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `args`, which must fail with exit code 1; returns stderr.
fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
    stderr(&out)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A child whose stdout and stderr lines arrive on one channel, each
/// tagged with its stream; killed on drop.
struct Running {
    child: Child,
    lines: mpsc::Receiver<(&'static str, String)>,
}

impl Running {
    fn spawn(args: &[&str]) -> Running {
        let mut child = bin()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn heartbeater");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        for (name, stream) in [
            ("stdout", Box::new(out) as Box<dyn Read + Send>),
            ("stderr", Box::new(err)),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send((name, line)).is_err() {
                        return;
                    }
                }
            });
        }
        Running { child, lines }
    }

    /// The next line of `stream` that contains `text`; fails the test with
    /// every line seen if none comes within `PATIENCE`.
    fn expect(&self, stream: &str, text: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((from, line)) if from == stream && line.contains(text) => return line,
                Ok(other) => seen.push(other),
                Err(_) => panic!("no {stream} line with {text:?}; saw {seen:#?}"),
            }
        }
    }

    /// The next JSON line on stdout whose `event` is `event`.
    fn expect_event(&self, event: &str) -> Value {
        let pattern = format!("\"event\":\"{event}\"");
        let line = self.expect("stdout", &pattern);
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// Item: connection failures say what went wrong first, TLS hints only where
// TLS can be the cause.

#[test]
fn connection_failures_name_the_cause_before_any_hint() {
    let closed = format!("127.0.0.1:{}", free_port());
    let err = fails(&["heartbeat", "--server", &closed]);
    assert!(
        err.starts_with(&format!(
            "error: nothing listens on {closed} (connection refused)"
        )),
        "{err}"
    );
    assert!(!err.contains("tls"), "no TLS hint for a closed port: {err}");

    let err = fails(&["peers", "--server", "no-such-host.invalid:8181"]);
    assert!(
        err.starts_with("error: cannot resolve the host of no-such-host.invalid:8181"),
        "{err}"
    );
    assert!(!err.contains("tls"), "no TLS hint for a bad name: {err}");

    // The HTTP port by mistake.
    let node = Serve::start(&["--in-memory", "--http-listen", "127.0.0.1:0"]);
    let http = node.started["http_listen"].as_str().expect("http_listen");
    let err = fails(&["peers", "--server", http]);
    assert!(
        err.starts_with(&format!(
            "error: {http} answered but is not a Heartbeater gRPC port"
        )),
        "{err}"
    );
    assert!(err.contains("is it the node's HTTP port?"), "{err}");
}

#[test]
fn tls_and_token_mistakes_name_the_missing_piece() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = certs::Ca::new("cluster CA");
    let ca_file = write(d, "ca.pem", &ca.pem);
    let node_leaf = ca.leaf("node");
    let operator = ca.leaf("operator");
    let intruder = certs::Ca::new("someone else").leaf("intruder");
    let tokens = write(d, "tokens", "s3cret-token\n");
    let node = Serve::start(&[
        "--in-memory",
        "--no-udp",
        "--tls-cert",
        s(&write(d, "node.pem", &node_leaf.cert)),
        "--tls-key",
        s(&write(d, "node.key", &node_leaf.key)),
        "--tls-client-ca",
        s(&ca_file),
        "--auth-token-file",
        s(&tokens),
    ]);
    let server = ["--server", node.addr.as_str()];
    fn with<'a>(server: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [&["peers"][..], server, extra].concat()
    }
    let with_cert = |cert: &certs::Leaf, name: &str| {
        vec![
            "--tls-ca".to_owned(),
            s(&ca_file).to_owned(),
            "--tls-cert".to_owned(),
            s(&write(d, &format!("{name}.pem"), &cert.cert)).to_owned(),
            "--tls-key".to_owned(),
            s(&write(d, &format!("{name}.key"), &cert.key)).to_owned(),
        ]
    };

    // Which of the node's alert or its closing the connection arrives
    // first varies: the message must not.
    for _ in 0..5 {
        let err = fails(&with(&server, &["--tls-ca", s(&ca_file)]));
        assert!(
            err.starts_with(&format!(
                "error: {} requires a client certificate for mutual TLS",
                node.addr
            )),
            "{err}"
        );
        assert!(err.ends_with("; pass --tls-cert and --tls-key\n"), "{err}");

        let intruder_args = with_cert(&intruder, "intruder");
        let args: Vec<&str> = intruder_args.iter().map(String::as_str).collect();
        let err = fails(&with(&server, &args));
        assert!(
            err.starts_with(&format!(
                "error: {} refused the client certificate",
                node.addr
            )),
            "{err}"
        );
    }

    let other_ca = write(d, "other-ca.pem", &certs::Ca::new("other").pem);
    let err = fails(&with(&server, &["--tls-ca", s(&other_ca)]));
    assert!(
        err.starts_with(&format!(
            "error: the certificate of {} is not trusted",
            node.addr
        )),
        "{err}"
    );

    let operator: Vec<String> = with_cert(&operator, "operator");
    let register = |token: &[&str]| {
        let mut args = vec![
            "register",
            "--server",
            node.addr.as_str(),
            "--peer-id",
            "p",
            "--peer",
            "127.0.0.1:9",
            "--freq",
            "1s",
        ];
        args.extend(operator.iter().map(String::as_str));
        args.extend_from_slice(token);
        fails(&args)
    };
    let err = register(&[]);
    assert!(
        err.starts_with("error: the node requires a token for this call"),
        "{err}"
    );
    assert!(err.contains("pass --token-file FILE"), "{err}");
    let err = register(&["--token", "not-the-token"]);
    assert!(
        err.starts_with("error: the node refused the token"),
        "{err}"
    );
}

// Item: settings and durations as people write them; numbers as people
// read them.

#[test]
fn a_misspelt_variable_is_named_with_the_setting_it_resembles() {
    let out = bin()
        .args(["serve", "--print-config"])
        .env("HEARTBEATER_MAXPEERS", "5")
        .output()
        .expect("serve --print-config");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "environment variable HEARTBEATER_MAXPEERS is not a setting and is ignored; did you mean HEARTBEATER_MAX_PEERS?"
        ),
        "{}",
        stderr(&out)
    );

    let mut cmd = bin();
    cmd.env("HEARTBEATER_LISTN", "127.0.0.1:1");
    let node = Serve::start_with(cmd, "127.0.0.1:0", &["--in-memory"]);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = node
            .stderr
            .recv_timeout(left)
            .expect("a warning in the log");
        if line.contains("HEARTBEATER_LISTN") {
            assert!(line.contains("did you mean HEARTBEATER_LISTEN?"), "{line}");
            break;
        }
    }
}

#[test]
fn durations_are_read_and_printed_as_people_write_them() {
    let usage = |freq: &str| {
        let out = run(&[
            "register",
            "--peer-id",
            "p",
            "--peer",
            "127.0.0.1:9",
            "--freq",
            freq,
        ]);
        assert_eq!(out.status.code(), Some(2), "--freq {freq}: a usage error");
        stderr(&out)
    };
    let err = usage("abc");
    assert!(
        err.contains(
            "invalid duration \"abc\": expected a number and a unit, e.g. 100ms, 1.5s, 2m"
        ),
        "{err}"
    );
    assert!(usage("0").contains("must be more than zero"));
    assert!(usage("0ms").contains("must be more than zero"));
    assert!(usage("100").contains("a unit is missing"));

    let node = Serve::start(&["--in-memory"]);
    let register = |id: &str, freq: &str| {
        let out = run(&[
            "register",
            "--server",
            &node.addr,
            "--peer-id",
            id,
            "--peer",
            "127.0.0.1:9",
            "--freq",
            freq,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let said = register("peer-a", "1.5s");
    assert!(said.contains(" every 1.5s "), "{said}");
    register("peer-b", "1m");
    register("peer-c", "2m30s");
    let table =
        String::from_utf8_lossy(&run(&["peers", "--server", &node.addr]).stdout).into_owned();
    // The header's first column is two words: `PEER ID`.
    let column = table
        .lines()
        .next()
        .and_then(|h| h.split_whitespace().position(|c| c == "FREQ"))
        .map(|i| i - 1)
        .unwrap_or_else(|| panic!("no FREQ column in {table}"));
    let freq = |id: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .and_then(|l| l.split_whitespace().nth(column))
            .unwrap_or_else(|| panic!("no row for {id} in {table}"))
            .to_owned()
    };
    assert_eq!(
        (freq("peer-a"), freq("peer-b"), freq("peer-c")),
        ("1.5s".into(), "1m".into(), "2m30s".into()),
        "{table}"
    );
}

/// The body of `GET path` over HTTP/1.0 (no chunked encoding).
fn http_get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the HTTP listener");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

#[test]
fn a_dead_peer_reads_as_down_in_logs_table_and_metrics() {
    let monitor = Serve::start(&["--in-memory", "--http-listen", "127.0.0.1:0"]);
    let peer = Serve::start(&["--in-memory"]);
    common::run_register(
        bin(),
        &monitor.addr,
        &peer.identity,
        &peer.addr,
        &["--freq", "100ms"],
    );
    monitor.expect("PeerUp");
    std::thread::sleep(Duration::from_millis(300));
    drop(peer);
    monitor.expect("PeerDown");

    // The log line says what convicted the peer, with an RTT people read.
    let deadline = Instant::now() + PATIENCE;
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = monitor
            .stderr
            .recv_timeout(left)
            .expect("a peer down log line");
        if line.contains("peer down") {
            break line;
        }
    };
    assert!(
        line.contains("peer down: no valid reply to 3 heartbeats in a row (3 convict)"),
        "{line}"
    );
    let rtt = line
        .split("last_rtt_ms=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no last_rtt_ms in {line}"));
    let decimals = rtt.split_once('.').map_or(0, |(_, d)| d.len());
    assert!(decimals <= 3, "last_rtt_ms={rtt}");

    // Long after the conviction, MISSED stays at the limit, marked.
    std::thread::sleep(Duration::from_millis(800));
    let out = run(&["peers", "--server", &monitor.addr]);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.contains(" 3+/3 "), "{table}");

    // Every float in /metrics in its shortest form.
    let http = monitor.started["http_listen"]
        .as_str()
        .expect("http_listen");
    let metrics = http_get(http, "/metrics");
    let mut floats = 0;
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if let Ok(v) = value.parse::<f64>() {
            if value.contains('.') {
                floats += 1;
                assert_eq!(value, v.to_string(), "{line}");
            }
        }
    }
    assert!(floats > 0, "no float in {metrics}");
}

// Item: the long-running commands say what they are doing.

#[test]
fn watch_follows_its_node_through_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let listen = format!("127.0.0.1:{}", free_port());
    let node = Serve::start_at(&listen, &["--data-dir", s(&data)]);
    let peer = Serve::start(&["--in-memory"]);
    common::run_register(
        bin(),
        &node.addr,
        &peer.identity,
        &peer.addr,
        &["--freq", "100ms"],
    );
    let watch = Running::spawn(&["watch", "--snapshot", "--server", &listen]);
    // The snapshot line says the stream is open.
    watch.expect("stdout", "Snapshot");

    drop(node);
    watch.expect("stderr", "connection lost");
    std::thread::sleep(Duration::from_millis(300));
    let node = Serve::start_at(&listen, &["--data-dir", s(&data)]);
    watch.expect("stderr", &format!("reconnected to {listen}"));
    // Events of the node's new life arrive.
    let other = Serve::start(&["--in-memory"]);
    common::run_register(
        bin(),
        &node.addr,
        &other.identity,
        &other.addr,
        &["--freq", "100ms"],
    );
    let registered = watch.expect("stdout", "Registered");
    assert!(registered.contains(&other.identity), "{registered}");
}

#[test]
fn watch_at_a_terminal_says_what_it_watches() {
    let node = Serve::start(&["--in-memory"]);
    // `script` gives the command a terminal: the banner is for a person.
    let command = format!(
        "{} watch --server {}",
        env!("CARGO_BIN_EXE_heartbeater"),
        node.addr
    );
    let mut script = std::process::Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("script (util-linux)");
    let (tx, rx) = mpsc::channel();
    let out = script.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let seen = rx.recv_timeout(PATIENCE);
    let _ = script.kill();
    let _ = script.wait();
    let line = seen.expect("a first line at the terminal");
    assert!(
        line.contains(&format!(
            "watching peer events of {} (Ctrl-C to stop)",
            node.addr
        )),
        "{line:?}"
    );
}

/// `publish --json` on `listen` for `topic`; its stdin stays open.
fn publisher(listen: &str, topic: &str) -> Running {
    let p = Running::spawn(&[
        "publish",
        "--json",
        "--listen",
        listen,
        "--topic",
        topic,
        "--heartbeat-rate",
        "100ms",
    ]);
    p.expect_event("publishing");
    p
}

#[test]
fn subscribe_says_whether_anything_is_there_and_follows_the_publisher() {
    let listen = format!("127.0.0.1:{}", free_port());
    let sub = Running::spawn(&[
        "subscribe",
        "--json",
        "--publisher",
        &listen,
        "--topic",
        "prices",
    ]);
    sub.expect_event("subscribed");
    let retrying = sub.expect_event("retrying");
    let reason = retrying["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("nothing listens on"), "{retrying}");

    // A publisher without the topic.
    let wrong = publisher(&listen, "news");
    sub.expect_event("not_found");
    drop(wrong);

    let right = publisher(&listen, "prices");
    let connected = sub.expect_event("connected");
    assert_eq!(connected["again"], false, "{connected}");
    drop(right);
    let lost = sub.expect_event("retrying");
    assert_eq!(lost["again"], true, "{lost}");

    let _back = publisher(&listen, "prices");
    let again = sub.expect_event("connected");
    assert_eq!(again["again"], true, "{again}");
}

#[test]
fn subscribe_in_text_says_it_is_not_there_yet() {
    let listen = format!("127.0.0.1:{}", free_port());
    let sub = Running::spawn(&["subscribe", "--publisher", &listen, "--topic", "prices"]);
    let start = sub.expect("stderr", "subscribing to \"prices\"");
    assert!(!start.contains("subscribed"), "{start}");
    sub.expect(
        "stderr",
        &format!("not subscribed yet, retrying: nothing listens on {listen}"),
    );
    let _publisher = publisher(&listen, "prices");
    sub.expect(
        "stderr",
        &format!("connected: messages of \"prices\" from {listen} follow"),
    );
}

// Item: help, completion and docs say what is true.

#[test]
fn serve_help_and_completion_show_defaults_variables_and_words() {
    let help = String::from_utf8_lossy(&run(&["serve", "--help"]).stdout).into_owned();
    for expected in [
        "[env: HEARTBEATER_MAX_PEERS] [default: 100000]",
        "[env: HEARTBEATER_LISTEN] [default: 127.0.0.1:8181]",
        "[env: HEARTBEATER_LOG_FORMAT] [default: text]",
        "[env: HEARTBEATER_TLS_CERT]",
    ] {
        assert!(help.contains(expected), "no {expected:?} in {help}");
    }
    let bash = String::from_utf8_lossy(&run(&["completions", "bash"]).stdout).into_owned();
    let log_format = bash
        .split("--log-format)")
        .nth(1)
        .and_then(|rest| rest.lines().nth(1))
        .unwrap_or_else(|| panic!("no --log-format case in {bash}"));
    assert!(
        log_format.contains("compgen -W \"text json\""),
        "{log_format}"
    );
}

fn doc(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `text` with every run of white space one space: prose, whatever its
/// line breaks.
fn prose(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn the_docs_recipes_work_from_anywhere_and_do_not_collide() {
    let readme = doc("README.md");
    let alias = readme
        .lines()
        .find(|l| l.starts_with("alias heartbeater="))
        .expect("the README's alias");
    assert!(
        alias.starts_with("alias heartbeater=\"$PWD/"),
        "an alias that works from any directory: {alias}"
    );
    // The security recipe's nodes are new nodes: its first `register` says
    // `registered`, not `updated` after the walkthrough.
    let dirs = |text: &str| -> Vec<String> {
        text.split("--data-dir ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next())
            .filter(|d| d.starts_with("/tmp/"))
            .map(str::to_owned)
            .collect()
    };
    let walkthrough = dirs(&readme);
    let recipe = dirs(&doc("docs/SECURITY.md"));
    assert!(!recipe.is_empty(), "the recipe's data directories");
    for d in &recipe {
        assert!(!walkthrough.contains(d), "{d} is the walkthrough's too");
    }
}

#[test]
fn the_demo_takes_as_long_as_everything_says() {
    let help = String::from_utf8_lossy(&run(&["--help"]).stdout).into_owned();
    let line = help
        .lines()
        .find(|l| l.trim_start().starts_with("demo "))
        .unwrap_or_else(|| panic!("no demo line in {help}"));
    assert!(
        line.trim_end().ends_with("in time)"),
        "a whole sentence: {line}"
    );
    assert!(line.contains("about 6 s"), "{line}");
    assert!(help.contains("in about 6 s"), "{help}");
    assert!(prose(&doc("README.md")).contains("it takes about six seconds"));
    assert!(prose(&doc("docs/OPERATIONS.md")).contains("It takes about 6 s"));

    let start = Instant::now();
    let out = run(&["demo"]);
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    assert!(
        took > Duration::from_secs(4) && took < Duration::from_secs(9),
        "the demo took {took:?}"
    );
}
