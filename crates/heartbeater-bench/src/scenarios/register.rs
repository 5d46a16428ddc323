//! `register`: acknowledged (synced) registrations per second from 64
//! concurrent clients, and raw synced RocksDB writes from 64 threads as the
//! limit (no RPC, no table). The goal is against what users run instead:
//! etcd `Put`s, in the `etcd` scenario (`etcd/durable_puts_ratio`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use heartbeater::store::{PeerRecord, RegistryStore, RocksDbStore};
use heartbeater::RegisterPeerRequest;

use super::{median, node_client, Settings};
use crate::child::Helper;
use crate::report::Row;

/// The record each baseline put writes, its id replaced per put.
fn template() -> anyhow::Result<PeerRecord> {
    let hourly = heartbeater::DetectorConfig::new(Duration::from_secs(3600), None, None)?;
    let spec = heartbeater::PeerSpec::new("template", "127.0.0.1", 9, hourly)?;
    Ok(PeerRecord::from_spec(&spec, 0))
}

/// Durable registrations per second from 64 concurrent clients on a fresh
/// RocksDB node; `round` keeps the peer ids of successive rounds apart.
pub async fn ours(window: Duration, round: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let node = Helper::start(&["node", "--data-dir", &dir_arg]).await?;
    let client = node_client(node.ready["addr"].as_str().unwrap_or_default())?;
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + window;
    let mut tasks = Vec::new();
    for t in 0..64 {
        let (client, done) = (client.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < end {
                client
                    .register_peer(RegisterPeerRequest {
                        peer_id: format!("r{round}-t{t}-{i}"),
                        peer_host: "127.0.0.1".into(),
                        peer_port: 9,
                        heartbeat_freq_millis: 3_600_000,
                        timeout_millis: None,
                        max_missed: None,
                        ..Default::default()
                    })
                    .await?;
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok::<(), heartbeater::ClientError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / window.as_secs_f64())
}

fn baseline(window: Duration) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(RocksDbStore::open(dir.path())?);
    let done = AtomicU64::new(0);
    let template = template()?;
    let end = Instant::now() + window;
    std::thread::scope(|scope| {
        for t in 0..64 {
            let (store, done, template) = (store.clone(), &done, &template);
            scope.spawn(move || {
                let mut i = 0u64;
                while Instant::now() < end {
                    let record = PeerRecord {
                        peer_id: format!("t{t}-{i}"),
                        ..template.clone()
                    };
                    if store.put_peer(&record).is_err() {
                        return;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
        }
    });
    Ok(done.load(Ordering::Relaxed) as f64 / window.as_secs_f64())
}

pub async fn run(s: &Settings) -> anyhow::Result<Vec<Row>> {
    let (mut o, mut b) = (Vec::new(), Vec::new());
    for round in 0..s.rounds() {
        let window = s.window();
        b.push(tokio::task::spawn_blocking(move || baseline(window)).await??);
        o.push(ours(s.window(), round).await?);
    }
    Ok(vec![
        Row::new(
            "register",
            "durable_per_s_c64",
            median(o),
            "registrations/s",
            "see etcd/durable_puts_ratio",
        ),
        Row::new(
            "register",
            "rocksdb_synced_puts_c64",
            median(b),
            "puts/s",
            "limit",
        ),
    ])
}
