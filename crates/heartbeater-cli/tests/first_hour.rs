//! The mistake paths a new user meets first, against the real binary: a
//! reader that goes away, a signal while stdin is open, a start on a port
//! that is taken.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{bin, Serve, PATIENCE};

/// The status a shell reports for a command stopped by a closed pipe.
const READER_GONE: i32 = 141;

/// Runs `heartbeater args` with its stdout a pipe whose reader is gone
/// before it starts: its first write fails with EPIPE. Returns the status
/// and stderr.
fn with_reader_gone(args: &[&str]) -> (ExitStatus, String) {
    let (reader, writer) = rustix::pipe::pipe().expect("pipe");
    drop(reader);
    let mut child = bin()
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    (child.wait().expect("wait"), stderr)
}

#[test]
fn every_command_ends_quietly_when_its_reader_goes_away() {
    let node = Serve::start(&["--in-memory"]);
    let peer = Serve::start(&["--in-memory"]);
    common::run_register(
        bin(),
        &node.addr,
        &peer.identity,
        &peer.addr,
        &["--freq", "100ms"],
    );
    let server = ["--server", node.addr.as_str()];
    let commands: Vec<Vec<&str>> = vec![
        [&["peers", "--json"][..], &server].concat(),
        [&["peers"][..], &server].concat(),
        [&["peers", "--watch", "100ms"][..], &server].concat(),
        [&["watch", "--snapshot"][..], &server].concat(),
        [&["heartbeat"][..], &server].concat(),
        vec!["completions", "bash"],
        vec!["serve", "--print-config"],
    ];
    for args in commands {
        let (status, stderr) = with_reader_gone(&args);
        assert_eq!(
            status.code(),
            Some(READER_GONE),
            "heartbeater {args:?}: {status}, stderr: {stderr}"
        );
        assert_eq!(stderr, "", "heartbeater {args:?} said something");
    }
}

/// Sends `kill -<signal>` to `pid`.
fn kill(signal: &str, pid: u32) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Waits up to `bound` for `child` to exit.
fn exits_within(child: &mut std::process::Child, bound: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < bound {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A `publish --json` child on a free port, its stdin a pipe, started:
/// its first line is out. Returns it and its address.
fn publisher() -> (std::process::Child, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut publisher = bin()
        .args(["publish", "--json", "--listen", &listen, "--topic", "t"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn publish");
    let mut first = [0u8; 1];
    publisher
        .stdout
        .as_mut()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("the publishing line");
    (publisher, listen)
}

#[test]
fn publish_stops_at_a_signal_while_its_stdin_is_still_open() {
    for signal in ["INT", "TERM"] {
        let (mut publisher, listen) = publisher();
        // The terminal stays open: this end of stdin is held until the end.
        let _stdin = publisher.stdin.take();
        // A subscriber is told: its stream ends.
        let mut subscriber = bin()
            .args([
                "subscribe",
                "--json",
                "--publisher",
                &listen,
                "--topic",
                "t",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn subscribe");
        let (tx, events) = mpsc::channel();
        let out = BufReader::new(subscriber.stdout.take().expect("stdout"));
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                let _ = tx.send(v["event"].as_str().unwrap_or_default().to_owned());
            }
        });
        let next_event = |name: &str| {
            let deadline = Instant::now() + PATIENCE;
            while let Ok(e) =
                events.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                if e == name {
                    return true;
                }
            }
            false
        };
        assert!(next_event("connected"), "the subscriber never connected");

        kill(signal, publisher.id());
        let status = exits_within(&mut publisher, Duration::from_secs(5));
        // The subscriber is told: its stream ends, and it says so.
        let told = next_event("retrying");
        let _ = subscriber.kill();
        let _ = subscriber.wait();
        if status.is_none() {
            let _ = publisher.kill();
            let _ = publisher.wait();
        }
        let status = status.unwrap_or_else(|| panic!("publish ignored SIG{signal}"));
        assert!(status.success(), "SIG{signal}: {status}");
        assert!(told, "SIG{signal}: the subscriber was not told");
    }
}

#[test]
fn subscribe_ends_quietly_when_its_reader_goes_away() {
    let (mut publisher, listen) = publisher();
    let mut stdin = publisher.stdin.take().expect("stdin");
    let (reader, writer) = rustix::pipe::pipe().expect("pipe");
    drop(reader);
    // Text mode: nothing is written to stdout until a message comes.
    let mut subscriber = bin()
        .args(["subscribe", "--publisher", &listen, "--topic", "t"])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn subscribe");
    let mut status = None;
    let start = Instant::now();
    while status.is_none() && start.elapsed() < PATIENCE {
        // Until the subscriber is connected, messages reach nobody.
        let _ = stdin.write_all(b"hello\n");
        status = exits_within(&mut subscriber, Duration::from_millis(200));
    }
    let _ = publisher.kill();
    let _ = publisher.wait();
    let Some(status) = status else {
        let _ = subscriber.kill();
        let _ = subscriber.wait();
        panic!("subscribe kept running with nobody reading its messages");
    };
    let mut stderr = String::new();
    let _ = subscriber
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr);
    assert_eq!(status.code(), Some(READER_GONE), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `serve` on `listen` with `dir` as data directory; its status and stderr.
fn serve_fails(listen: &str, dir: &Path, extra: &[&str]) -> String {
    let out = bin()
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(dir)
        .args(extra)
        .output()
        .expect("serve");
    assert!(!out.status.success(), "serve on a taken port started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_start_on_a_taken_port_writes_nothing() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");

    // The gRPC port: no data directory appears.
    let stderr = serve_fails(&taken_addr, &dir, &[]);
    assert!(stderr.contains(&taken_addr), "{stderr}");
    assert!(!dir.exists(), "a failed start created {}", dir.display());

    // A real start, then failed ones: the next real start has epoch 2.
    let node = Serve::start(&["--data-dir", dir.to_str().expect("utf-8")]);
    assert_eq!(node.started["epoch"], 1);
    drop(node);
    for _ in 0..3 {
        serve_fails(&taken_addr, &dir, &[]);
    }
    // The HTTP port alone: no epoch either, and no "node started" before
    // the error.
    let stderr = serve_fails("127.0.0.1:0", &dir, &["--http-listen", &taken_addr]);
    assert!(!stderr.contains("node started"), "{stderr}");
    assert!(stderr.contains("HTTP"), "{stderr}");
    let node = Serve::start(&["--data-dir", dir.to_str().expect("utf-8")]);
    assert_eq!(node.started["epoch"], 2, "failed starts stored epochs");
}

#[test]
fn values_out_of_range_are_usage_errors() {
    // Nothing listens on the server: a usage error comes first.
    let cases: [&[&str]; 4] = [
        &["demo", "--freq", "5ms"],
        &["peers", "--server", "127.0.0.1:1", "--watch", "10ms"],
        &[
            "register",
            "--server",
            "127.0.0.1:1",
            "--peer-id",
            "db-2",
            "--peer",
            "127.0.0.1:2",
            "--freq",
            "100ms",
            "--max-missed",
            "0",
        ],
        &[
            "register",
            "--server",
            "127.0.0.1:1",
            "--peer-id",
            "db-2",
            "--peer",
            "127.0.0.1:2",
            "--freq",
            "2h",
        ],
    ];
    for args in cases {
        let out = bin().args(args).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(!stderr.contains("nothing listens"), "{args:?}: {stderr}");
    }
}
