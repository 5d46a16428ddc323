//! The command line with TLS, tokens and a large registry, against real
//! `heartbeater serve` processes.

#[path = "../../heartbeater/tests/common/certs.rs"]
mod certs;
mod common;

use common::{bin, Serve, PATIENCE};

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

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
        let hourly =
            heartbeater::DetectorConfig::new(Duration::from_secs(3600), None, None).unwrap();
        let ops: Vec<RegistryOp> = (0..N)
            .map(|i| {
                let spec = heartbeater::PeerSpec::new(&format!("peer-{i}"), "127.0.0.1", 9, hourly)
                    .unwrap();
                RegistryOp::Put(PeerRecord::from_spec(&spec, 0))
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
    assert!(err.contains("the node requires a token"), "{err}");
    // A token but no client certificate: the handshake fails.
    let args = register(&["--tls-ca", s(&ca_file), "--token-file", s(&tokens)]);
    let err = fails(&args);
    assert!(err.contains("requires a client certificate"), "{err}");
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

    // Rotation: a new token first, the old one kept, SIGHUP; then the old
    // one dropped, SIGHUP: it is refused from the next call on.
    std::fs::write(&tokens, "n3w-token\ns3cret-token\n").unwrap();
    a.hup();
    assert_eq!(a.expect("auth_tokens_reloaded")["tokens"], 2);
    let deregister = |token: &str| {
        let mut args = vec![
            "deregister",
            "--server",
            a.addr.as_str(),
            "--peer-id",
            &b.identity,
        ];
        args.extend_from_slice(&tls);
        args.extend_from_slice(&["--token", token]);
        run(&args)
    };
    std::fs::write(&tokens, "n3w-token\n").unwrap();
    a.hup();
    assert_eq!(a.expect("auth_tokens_reloaded")["tokens"], 1);
    let refused = deregister("s3cret-token");
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("the node refused the token"));
    // A broken token file keeps the tokens in use.
    std::fs::write(&tokens, "has a space\n").unwrap();
    a.hup();
    std::thread::sleep(Duration::from_millis(300));
    assert!(deregister("n3w-token").status.success());
}

#[test]
fn listening_beyond_loopback_with_no_protection_warns() {
    let node = Serve::start_at("0.0.0.0:0", &["--in-memory"]);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = node.stderr.recv_timeout(left).expect("a warning on stderr");
        if line.contains("neither TLS nor a token") {
            break;
        }
    }
    let quiet = Serve::start(&["--in-memory"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        quiet.stderr.try_iter().all(|l| !l.contains("neither TLS")),
        "loopback needs no warning"
    );
}
