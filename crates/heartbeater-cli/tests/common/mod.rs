//! Helpers shared by the CLI tests: a `heartbeater serve --json` child.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod relay;

/// Generous bound for anything that should happen soon.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn bin() -> Command {
    // No HTTP listener unless a test asks for one (a flag wins over
    // this): many nodes run at once, some on fixed ports.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_heartbeater"));
    cmd.env("HEARTBEATER_HTTP_LISTEN", "off");
    cmd
}

/// Runs `cmd` (a `heartbeater register ...`) and fails the test, with its
/// stderr, if the registration was refused.
pub fn run_register(
    mut cmd: Command,
    server: &str,
    peer_id: &str,
    peer_addr: &str,
    timing: &[&str],
) {
    let out = cmd
        .args(["register", "--server", server])
        .args(["--peer-id", peer_id, "--peer", peer_addr])
        .args(timing)
        .output()
        .expect("register");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `serve --json` child, killed on drop; its start line already read,
/// the lines after it on a channel.
pub struct Serve {
    pub child: Child,
    pub addr: String,
    pub identity: String,
    /// The start line.
    pub started: Value,
    pub lines: std::sync::mpsc::Receiver<Value>,
    pub stderr: std::sync::mpsc::Receiver<String>,
}

impl Serve {
    pub fn start(args: &[&str]) -> Serve {
        Self::start_at("127.0.0.1:0", args)
    }

    pub fn start_at(listen: &str, args: &[&str]) -> Serve {
        Self::start_with(bin(), listen, args)
    }

    /// `serve` through `cmd`: `bin()`, or a wrapper such as `ip netns exec
    /// NS <heartbeater>` that execs it (so the child is the node itself).
    pub fn start_with(mut cmd: Command, listen: &str, args: &[&str]) -> Serve {
        let mut child = cmd
            .args(["serve", "--json", "--listen", listen])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn serve");
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        let (etx, stderr) = std::sync::mpsc::channel();
        let err = BufReader::new(child.stderr.take().expect("stderr"));
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                let _ = etx.send(line);
            }
        });
        let v = lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("serve {args:?} did not start"));
        Serve {
            child,
            addr: v["listen"].as_str().expect("listen").to_owned(),
            identity: v["identity"].as_str().expect("identity").to_owned(),
            started: v.clone(),
            lines,
            stderr,
        }
    }

    /// Waits for the next line whose `event` is `name`.
    pub fn expect(&self, name: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {name} line"));
            if v["event"] == name {
                return v;
            }
        }
    }

    pub fn hup(&self) {
        self.signal("HUP");
    }

    /// Sends `kill -<name>` to the node.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name}");
    }

    /// The peer events (`event` of `kinds`) about `peer_id` that arrive
    /// within `wait`, in order.
    pub fn events_for(&self, peer_id: &str, wait: Duration) -> Vec<String> {
        let deadline = Instant::now() + wait;
        let mut seen = Vec::new();
        while let Ok(v) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if v["peer_id"] == peer_id {
                seen.push(v["event"].as_str().unwrap_or_default().to_owned());
            }
        }
        seen
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stores `n` registrations nobody answers for (`silent-000000`, ...,
/// heartbeated once an hour) in `store`: a large registry, as a node
/// restarting on one finds it.
pub fn fill_registry(store: &dyn heartbeater::RegistryStore, n: usize) {
    let detector =
        heartbeater::DetectorConfig::new(Duration::from_secs(3600), None, None).expect("timing");
    let ops: Vec<heartbeater::RegistryOp> = (0..n)
        .map(|i| {
            let spec =
                heartbeater::PeerSpec::new(&format!("silent-{i:06}"), "127.0.0.1", 9, detector)
                    .expect("a valid registration");
            heartbeater::RegistryOp::Put(heartbeater::store::PeerRecord::from_spec(&spec, 0))
        })
        .collect();
    // One write, one sync.
    store.apply(&ops).expect("stored");
}
