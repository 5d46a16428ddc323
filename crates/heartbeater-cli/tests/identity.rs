//! Peer ids through the real binary: only an id a node can answer with is
//! registered, every spelling of a UUID is one peer, a node can be named,
//! `register` says at once whom the peer answers as, and an identity from
//! the wire never reaches a terminal unescaped.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run heartbeater")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `register` of `peer_id` at `peer` every 100 ms on `server`, plus `extra`.
fn register(server: &str, peer_id: &str, peer: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "register",
        "--server",
        server,
        "--peer-id",
        peer_id,
        "--peer",
        peer,
        "--freq",
        "100ms",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn peers_json(server: &str) -> Vec<Value> {
    let out = run(&["peers", "--json", "--server", server]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// The body of `GET path` from the HTTP listener at `addr`.
fn http_get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the HTTP listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    let _ = stream.read_to_string(&mut raw);
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
    body.to_owned()
}

#[test]
fn an_abbreviated_id_is_refused_and_every_spelling_of_a_uuid_is_one_peer() {
    let monitor = Serve::start(&["--in-memory"]);
    let peer = Serve::start(&["--in-memory"]);

    // The README's placeholder, as a newcomer copies it.
    let shortened = format!("{}...", &peer.identity[..4]);
    let out = register(&monitor.addr, &shortened, &peer.addr, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("whole identity") && err.contains("heartbeater serve"),
        "{err}"
    );

    let out = register(
        &monitor.addr,
        &peer.identity.to_uppercase(),
        &peer.addr,
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains(&format!("registered peer {} at", peer.identity)),
        "{said}"
    );
    assert!(said.contains("peer answers: ALIVE"), "{said}");

    let out = register(&monitor.addr, &peer.identity, &peer.addr, &["--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(answer["event"], "updated", "the same peer: {answer}");
    assert_eq!(answer["answer"], "alive", "{answer}");

    let ids: Vec<Value> = peers_json(&monitor.addr)
        .into_iter()
        .map(|p| p["peer_id"].clone())
        .collect();
    assert_eq!(ids, [peer.identity.as_str()]);
}

#[test]
fn moving_an_alive_peer_to_a_silent_address_is_not_reported_alive() {
    let monitor = Serve::start(&["--in-memory"]);
    let peer = Serve::start(&["--in-memory"]);
    let out = register(&monitor.addr, &peer.identity, &peer.addr, &[]);
    assert!(text(&out.stdout).contains("peer answers: ALIVE"));

    // Its state carries over to the new registration, but says nothing
    // about the new address, where nothing answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let silent = silent.local_addr().expect("addr").to_string();
    let out = register(&monitor.addr, &peer.identity, &silent, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stdout).contains("ALIVE"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("no answer from the peer"),
        "{}",
        text(&out.stderr)
    );

    // Back to the right address: alive again, by its replies.
    let out = register(&monitor.addr, &peer.identity, &peer.addr, &[]);
    assert!(
        text(&out.stdout).contains("peer answers: ALIVE"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn register_says_whom_the_peer_answers_as_and_every_view_shows_it() {
    let monitor = Serve::start(&["--in-memory", "--http-listen", "127.0.0.1:0"]);
    let http = monitor.started["http_listen"]
        .as_str()
        .expect("http_listen")
        .to_owned();
    let peer = Serve::start(&["--in-memory"]);

    let out = register(&monitor.addr, "db-2", &peer.addr, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let expected = format!(
        "warning: the peer at {} answers as {}, not db-2",
        peer.addr, peer.identity
    );
    assert!(err.contains(&expected), "{err}");

    let out = register(&monitor.addr, "db-2", &peer.addr, &["--json"]);
    let answer: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(answer["answer"], "answers_as", "{answer}");
    assert_eq!(answer["answers_as"], peer.identity.as_str(), "{answer}");

    let out = run(&["peers", "--server", &monitor.addr]);
    let table = text(&out.stdout);
    let header = table.lines().next().unwrap_or_default();
    assert!(header.trim_end().ends_with("NOTE"), "{table}");
    assert!(
        table.contains(&format!("answers as {}", peer.identity)),
        "{table}"
    );
    let listed = peers_json(&monitor.addr);
    assert_eq!(listed[0]["answers_as"], peer.identity.as_str());
    assert_ne!(listed[0]["state"], "ALIVE", "its replies do not count");

    let api: Value = serde_json::from_str(&http_get(&http, "/api/peers")).unwrap();
    assert_eq!(
        api["peers"][0]["answers_as"],
        peer.identity.as_str(),
        "{api}"
    );
    let page = http_get(&http, "/");
    assert!(page.contains("answers as "), "the status page shows it");

    // Nothing at all at the address: said too, after a second at most.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let started = Instant::now();
    let out = register(&monitor.addr, "db-3", &silent_addr, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("no answer from the peer at {silent_addr} yet")),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_node_named_with_node_id_is_registered_by_its_name_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let data = data.to_str().unwrap();
    let named = Serve::start(&["--data-dir", data, "--node-id", "db-2"]);
    assert_eq!(named.identity, "db-2");
    let monitor = Serve::start(&["--in-memory"]);
    let out = register(&monitor.addr, "db-2", &named.addr, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("peer answers: ALIVE"));
    drop(named);

    let again = Serve::start(&["--data-dir", data]);
    assert_eq!(again.identity, "db-2", "the name is stored");
    drop(again);

    let out = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--node-id",
        "db-3",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("\"db-2\"") && err.contains("\"db-3\""),
        "{err}"
    );

    // `--print-config`: checks every setting and exits, whatever it finds.
    let out = run(&["serve", "--node-id", "db 2", "--print-config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--node-id"),
        "{}",
        text(&out.stderr)
    );
}

/// An identity that clears the screen, retitles the window and turns the
/// text red, as a hostile peer would answer with.
const HOSTILE: &str = "\u{1b}]0;owned\u{7}\u{1b}[2J\u{1b}[31mdb-2";
/// How it is shown.
const ESCAPED: &str = "\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\u{1b}[31mdb-2";

/// A peer that answers every heartbeat datagram as [`HOSTILE`].
fn hostile_peer() -> String {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut pong = Vec::new();
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            pong.clear();
            if heartbeater::udp::answer(&buf[..n], HOSTILE, 1, None, &mut pong).is_ok() {
                let _ = socket.send_to(&pong, from);
            }
        }
    });
    addr
}

/// A child process killed when the test ends, even by a failed assertion.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines `child` writes on stdout and on stderr, each on a channel.
fn lines_of(child: &mut Child) -> (mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let forward = |stream: Box<dyn Read + Send>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        rx
    };
    (
        forward(Box::new(child.stdout.take().expect("stdout"))),
        forward(Box::new(child.stderr.take().expect("stderr"))),
    )
}

fn line_with(lines: &mpsc::Receiver<String>, needle: &str, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no line with {needle:?} in {seen:#?}"));
        seen.push(line.clone());
        if line.contains(needle) {
            return line;
        }
    }
}

fn no_control_characters(what: &str, text: &str) {
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{what} printed a control character: {text:?}"
    );
}

#[test]
fn an_identity_with_terminal_sequences_is_printed_escaped() {
    let peer = hostile_peer();
    // The monitor in text mode, as on an operator's terminal.
    let mut monitor = Killed(
        bin()
            .args(["serve", "--in-memory", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn serve"),
    );
    let (out, err) = lines_of(&mut monitor.0);
    let mut serve_out = Vec::new();
    let listen = line_with(&out, "listen", &mut serve_out);
    let addr = listen.split_whitespace().last().unwrap().to_owned();
    let mut watch = Killed(
        bin()
            .args(["watch", "--server", &addr])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn watch"),
    );
    let (watched, _) = lines_of(&mut watch.0);
    // `watch` has its stream open once the node counts a watcher; a short
    // pause is enough on loopback.
    std::thread::sleep(Duration::from_millis(500));

    let id = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f";
    let registered = register(&addr, id, &peer, &[]);
    let said = text(&registered.stderr);
    assert!(
        said.contains(&format!("answers as {ESCAPED}, not {id}")),
        "{said}"
    );

    let mut watch_out = Vec::new();
    let line = line_with(&watched, "IdentityMismatch", &mut watch_out);
    assert!(
        line.ends_with(&format!("observed_id={ESCAPED}")),
        "{line:?}"
    );
    let line = line_with(&out, "IdentityMismatch", &mut serve_out);
    assert!(
        line.ends_with(&format!("observed_id={ESCAPED}")),
        "{line:?}"
    );
    let mut serve_err = Vec::new();
    line_with(&err, "identity mismatch", &mut serve_err);
    let table = text(&run(&["peers", "--server", &addr]).stdout);
    assert!(table.contains(&format!("answers as {ESCAPED}")), "{table}");

    drop(watch);
    drop(monitor);
    no_control_characters("register", &said);
    no_control_characters("watch", &watch_out.join("\n"));
    no_control_characters("serve", &serve_out.join("\n"));
    no_control_characters("the log", &serve_err.join("\n"));
    no_control_characters("peers", &table);
}
