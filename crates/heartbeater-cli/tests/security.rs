//! The command line with TLS, tokens and a large registry, against real
//! `heartbeater serve` processes.

#[path = "../../heartbeater/tests/common/certs.rs"]
mod certs;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(20);

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_heartbeater"))
}

/// A `serve --json` child, killed on drop; its start line already read.
struct Serve {
    child: Child,
    addr: String,
    identity: String,
}

impl Serve {
    fn start(args: &[&str]) -> Serve {
        let mut child = bin()
            .args(["serve", "--json", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("start line");
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("serve {args:?} did not start: {line:?}"));
        Serve {
            child,
            addr: v["listen"].as_str().expect("listen").to_owned(),
            identity: v["identity"].as_str().expect("identity").to_owned(),
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run<A: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[A]) -> Output {
    bin().args(args).output().expect("run heartbeater")
}

fn ok<A: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[A]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "heartbeater {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn fails<A: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[A]) -> String {
    let out = run(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "heartbeater {args:?} should fail"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn a_hundred_thousand_peers_list_completely_through_pages() {
    use heartbeater::store::PeerRecord;
    use heartbeater::{RegistryOp, RegistryStore, RocksDbStore};
    const N: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    {
        let store = RocksDbStore::open(dir.path()).unwrap();
        let ops: Vec<RegistryOp> = (0..N)
            .map(|i| {
                RegistryOp::Put(PeerRecord {
                    peer_id: format!("peer-{i}"),
                    host: "127.0.0.1".into(),
                    port: 9,
                    heartbeat_freq: Duration::from_secs(3600),
                    timeout: Duration::from_secs(3600),
                    max_missed: 3,
                    registered_at_micros: 0,
                    last_epoch: None,
                })
            })
            .collect();
        store.apply(&ops).unwrap();
    }
    let node = Serve::start(&["--data-dir", s(dir.path())]);
    let out = ok(&[
        "peers",
        "--json",
        "--server",
        &node.addr,
        "--deadline",
        "30s",
    ]);
    let ids: Vec<String> = out
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json line");
            v["peer_id"].as_str().expect("peer_id").to_owned()
        })
        .collect();
    assert_eq!(ids.len(), N, "every peer, once");
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "in id order, no repeats"
    );
}

/// The recipe of docs/SECURITY.md with certificates made here: two nodes
/// with mutual TLS and a token; the CLI registers one on the other.
#[test]
fn mutual_tls_and_a_token_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = certs::Ca::new("cluster CA");
    let ca_file = write(d, "ca.pem", &ca.pem);
    let files = |name: &str| {
        let leaf = ca.leaf(name);
        (
            write(d, &format!("{name}.pem"), &leaf.cert),
            write(d, &format!("{name}.key"), &leaf.key),
        )
    };
    let (a_cert, a_key) = files("a");
    let (b_cert, b_key) = files("b");
    let (op_cert, op_key) = files("operator");
    let tokens = write(d, "tokens", "# cluster token\ns3cret-token\n");
    let node = |cert: &Path, key: &Path| {
        Serve::start(&[
            "--in-memory",
            "--no-udp",
            "--tls-cert",
            s(cert),
            "--tls-key",
            s(key),
            "--tls-client-ca",
            s(&ca_file),
            "--auth-token-file",
            s(&tokens),
        ])
    };
    let a = node(&a_cert, &a_key);
    let b = node(&b_cert, &b_key);
    let tls = [
        "--tls-ca",
        s(&ca_file),
        "--tls-cert",
        s(&op_cert),
        "--tls-key",
        s(&op_key),
    ];
    let register = |extra: &[&str]| {
        let mut args = vec![
            "register",
            "--server",
            &a.addr,
            "--peer-id",
            &b.identity,
            "--peer",
            &b.addr,
            "--freq",
            "100ms",
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };

    // No token: refused, named.
    let args = register(&tls);
    let err = fails(&args);
    assert!(err.to_lowercase().contains("unauthenticated"), "{err}");
    // A token but no client certificate: the handshake fails.
    let args = register(&["--tls-ca", s(&ca_file), "--token-file", s(&tokens)]);
    let err = fails(&args);
    assert!(err.contains("unavailable"), "{err}");
    // No TLS at all.
    let args = register(&["--token-file", s(&tokens)]);
    fails(&args);

    let mut good = tls.to_vec();
    good.extend_from_slice(&["--token-file", s(&tokens)]);
    let args = register(&good);
    ok(&args);

    // B is heartbeated over gRPC with mutual TLS (no UDP): ALIVE.
    let start = Instant::now();
    loop {
        let mut args = vec!["peers", "--json", "--server", a.addr.as_str()];
        args.extend_from_slice(&tls);
        let out = ok(&args);
        if out.contains("\"ALIVE\"") {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "B never ALIVE on A: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
