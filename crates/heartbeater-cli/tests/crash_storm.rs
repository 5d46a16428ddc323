//! Crash storms: many clients register and deregister peers on a `serve`
//! process that is SIGKILLed at a random moment, round after round. After
//! each restart, every acknowledged registration is there and whole, every
//! acknowledged deregistration is gone, the identity is the same and the
//! epoch grew.
//!
//! 20 rounds by default; `HEARTBEATER_CRASH_ROUNDS=200 cargo test -p
//! heartbeater-cli --test crash_storm` for the long run.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heartbeater::{DeregisterPeerRequest, HeartbeatClient, RegisterPeerRequest};
use serde_json::Value;

const CLIENTS: usize = 16;

struct Serve {
    child: Child,
    addr: String,
    identity: String,
    epoch: u64,
}

fn start(dir: &Path) -> Serve {
    let mut child = Command::new(env!("CARGO_BIN_EXE_heartbeater"))
        .env("HEARTBEATER_HTTP_LISTEN", "off")
        .args(["serve", "--json", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("start line");
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("no start: {line:?}"));
    Serve {
        child,
        addr: v["listen"].as_str().expect("listen").to_owned(),
        identity: v["identity"].as_str().expect("identity").to_owned(),
        epoch: v["epoch"].as_u64().expect("epoch"),
    }
}

/// What the clients were told, and what they cannot know.
#[derive(Default)]
struct Ledger {
    /// Acknowledged registrations not acknowledged as deregistered since:
    /// id -> port registered.
    present: HashMap<String, u16>,
    /// Acknowledged deregistrations.
    absent: HashSet<String>,
    /// Changes in flight when the node died: either outcome is right.
    unknown: HashSet<String>,
    acknowledged: usize,
}

fn request(id: &str, port: u16) -> RegisterPeerRequest {
    RegisterPeerRequest {
        peer_id: id.to_owned(),
        peer_host: "127.0.0.1".into(),
        peer_port: u32::from(port),
        heartbeat_freq_millis: 3_600_000,
        ..Default::default()
    }
}

async fn storm(addr: &str, round: usize, ledger: Arc<Mutex<Ledger>>) {
    let (host, port) = addr.rsplit_once(':').expect("addr");
    let client = HeartbeatClient::new(host, port.parse().expect("port"), Duration::from_secs(5))
        .expect("client");
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (client, ledger) = (client.clone(), ledger.clone());
            tokio::spawn(async move {
                for n in 0.. {
                    let id = format!("r{round}-c{c}-n{n}");
                    let port = 1 + ((round * 131 + c * 17 + n) % 60_000) as u16;
                    ledger.lock().unwrap().unknown.insert(id.clone());
                    if client.register_peer(request(&id, port)).await.is_err() {
                        return; // the node died: this one stays unknown
                    }
                    {
                        let mut l = ledger.lock().unwrap();
                        l.unknown.remove(&id);
                        l.present.insert(id.clone(), port);
                        l.acknowledged += 1;
                    }
                    // Every third registration is taken back at once.
                    if n % 3 == 0 {
                        {
                            let mut l = ledger.lock().unwrap();
                            l.present.remove(&id);
                            l.unknown.insert(id.clone());
                        }
                        let gone = client
                            .deregister_peer(DeregisterPeerRequest {
                                peer_id: id.clone(),
                            })
                            .await;
                        if gone.is_err() {
                            return;
                        }
                        let mut l = ledger.lock().unwrap();
                        l.unknown.remove(&id);
                        l.absent.insert(id);
                        l.acknowledged += 1;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

#[test]
fn acknowledged_changes_survive_sigkill_at_random_moments() {
    let rounds: usize = std::env::var("HEARTBEATER_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut node = start(dir.path());
    let (identity, mut epoch) = (node.identity.clone(), node.epoch);
    // A seeded sequence of kill delays, 50 to 450 ms.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..rounds {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(50 + seed % 400);
        let addr = node.addr.clone();
        let storming = runtime.spawn(storm_owned(addr, round, ledger.clone()));
        std::thread::sleep(delay);
        node.child.kill().expect("SIGKILL");
        let _ = node.child.wait();
        runtime.block_on(storming).unwrap();

        node = start(dir.path());
        assert_eq!(node.identity, identity, "round {round}: identity changed");
        assert!(node.epoch > epoch, "round {round}: epoch did not grow");
        epoch = node.epoch;
        let (host, port) = node.addr.rsplit_once(':').unwrap();
        let client = runtime
            .block_on(async {
                HeartbeatClient::new(host, port.parse().unwrap(), Duration::from_secs(10))
            })
            .unwrap();
        let listed = runtime.block_on(client.list_peers()).unwrap().peers;
        let stored: HashMap<String, u32> = listed
            .into_iter()
            .map(|p| {
                assert_eq!(
                    p.heartbeat_freq_millis, 3_600_000,
                    "{}: not whole",
                    p.peer_id
                );
                assert_eq!(p.peer_host, "127.0.0.1", "{}: not whole", p.peer_id);
                (p.peer_id, p.peer_port)
            })
            .collect();
        let l = ledger.lock().unwrap();
        for (id, port) in &l.present {
            assert_eq!(
                stored.get(id),
                Some(&u32::from(*port)),
                "round {round}: acknowledged registration {id} lost"
            );
        }
        for id in &l.absent {
            assert!(
                !stored.contains_key(id),
                "round {round}: acknowledged deregistration {id} undone"
            );
        }
    }
    let _ = node.child.kill();
    let _ = node.child.wait();
    let l = ledger.lock().unwrap();
    eprintln!(
        "crash storm: {rounds} rounds, {} changes acknowledged, {} registered at the end, 0 lost",
        l.acknowledged,
        l.present.len()
    );
    assert!(
        l.acknowledged > rounds,
        "the storms acknowledged almost nothing"
    );
}

async fn storm_owned(addr: String, round: usize, ledger: Arc<Mutex<Ledger>>) {
    storm(&addr, round, ledger).await
}
