//! `load`: a node with a RocksDB registry under steady pressure. 64 clients,
//! each on its own connection, call `Heartbeat` 100 times a second while
//! 1,000 peers are registered and deregistered over and over, and the node
//! heartbeats 100 stable peers every 100 ms. Every call must succeed, no
//! peer may be declared down (every responder is alive all along), and the
//! node's memory must stop growing.
//!
//! Not run by default (it takes a minute); `scripts/load.sh` runs it and
//! checks the figures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use heartbeater::proto::{HeartbeatMessage, PeerEventKind};
use heartbeater::DeregisterPeerRequest;

use super::{node_client, raw_client, register_all, responders, wait_all_alive, Settings};
use crate::child::Helper;
use crate::procfs;
use crate::report::Row;

const STABLE: usize = 100;
const CHURN: usize = 1_000;
const CLIENTS: usize = 64;
const CALL_EVERY: Duration = Duration::from_millis(10);
const FREQ_MS: i64 = 100;

#[derive(Default)]
struct Tally {
    calls: AtomicU64,
    call_errors: AtomicU64,
    registry_ops: AtomicU64,
    registry_errors: AtomicU64,
    downs: AtomicU64,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// 64 callers, each on its own connection, one call every `CALL_EVERY`.
async fn callers(addr: &str, end: Instant, tally: Arc<Tally>) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let mut client = raw_client(addr).await?;
        let tally = tally.clone();
        tasks.push(tokio::spawn(async move {
            let message = HeartbeatMessage {
                client_id: format!("load-client-{i}"),
                client_epoch: 1,
            };
            let mut tick = tokio::time::interval(CALL_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < end {
                tick.tick().await;
                match client.heartbeat(message.clone()).await {
                    Ok(_) => tally.calls.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("load: Heartbeat failed: {e}");
                        tally.call_errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}

/// Registers every churn peer, then deregisters every one, until `end`;
/// always finishes a round, so the registry ends as it began.
async fn churn(
    client: heartbeater::HeartbeatClient,
    peers: Vec<(u16, String)>,
    end: Instant,
    tally: Arc<Tally>,
) {
    let mut rounds = 0u64;
    while Instant::now() < end {
        rounds += 1;
        let register = futures_util::stream::iter(peers.iter().cloned())
            .map(|(port, id)| {
                let client = client.clone();
                async move {
                    client
                        .register_peer(super::registration(port, id, FREQ_MS))
                        .await
                        .map(|_| ())
                }
            })
            .buffer_unordered(64);
        count(register, &tally).await;
        let deregister = futures_util::stream::iter(peers.iter().cloned())
            .map(|(_, id)| {
                let client = client.clone();
                async move {
                    client
                        .deregister_peer(DeregisterPeerRequest { peer_id: id })
                        .await
                        .map(|_| ())
                }
            })
            .buffer_unordered(64);
        count(deregister, &tally).await;
    }
    eprintln!("load: {rounds} churn rounds of {} peers", peers.len());
}

async fn count(
    results: impl futures_util::Stream<Item = Result<(), heartbeater::ClientError>>,
    tally: &Tally,
) {
    futures_util::pin_mut!(results);
    while let Some(r) = results.next().await {
        tally.registry_ops.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = r {
            eprintln!("load: registry change failed: {e}");
            tally.registry_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub async fn run(s: &Settings) -> anyhow::Result<Vec<Row>> {
    let secs = if s.quick { 15 } else { 60 };
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_string_lossy().into_owned();
    let mut node = Helper::start(&["node", "--data-dir", &data]).await?;
    let pid = node.pid()?;
    let addr = node.ready["addr"].as_str().unwrap_or_default().to_owned();
    let client = node_client(&addr)?;
    let (_responders, groups) = responders(STABLE + CHURN, STABLE + CHURN).await?;
    let mut peers: Vec<(u16, String)> = groups.into_iter().flatten().collect();
    let churn_peers = peers.split_off(STABLE);
    register_all(&client, &peers, FREQ_MS).await?;
    wait_all_alive(&mut node, STABLE, Duration::from_secs(60)).await?;

    let tally = Arc::new(Tally::default());
    let mut events = client.watch_peers(false).await?;
    let watch_tally = tally.clone();
    let watcher = tokio::spawn(async move {
        while let Some(Ok(event)) = events.next().await {
            if event.kind == PeerEventKind::PeerDown as i32 {
                eprintln!("load: false PeerDown of {}", event.peer_id);
                watch_tally.downs.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    // Warm up every path once (a churn round, the callers' connections)
    // before the first memory figure, so that it is not the cold node.
    let warm = Instant::now() + Duration::from_secs(2);
    tokio::join!(
        churn(
            client.clone(),
            churn_peers.clone(),
            warm,
            Arc::new(Tally::default())
        ),
        callers(&addr, warm, Arc::new(Tally::default())),
    )
    .1?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = procfs::rss_bytes(pid)?;

    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    // Memory is flat when it stops growing: the second half of the run
    // peaks no higher than the first (allocators and RocksDB's memtables
    // fill up to their bounds early on).
    let half = start + Duration::from_secs(secs / 2);
    let sampler = tokio::spawn(async move {
        let (mut first, mut second) = (0u64, 0u64);
        while Instant::now() < end {
            let rss = procfs::rss_bytes(pid).unwrap_or(0);
            if Instant::now() < half {
                first = first.max(rss);
            } else {
                second = second.max(rss);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        (first, second)
    });
    let (_, called) = tokio::join!(
        churn(client.clone(), churn_peers, end, tally.clone()),
        callers(&addr, end, tally.clone()),
    );
    called?;
    let elapsed = start.elapsed().as_secs_f64();
    let (rss_first_half, rss_second_half) = sampler.await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = procfs::rss_bytes(pid)?;
    let listed = client.list_peers().await?.peers.len();
    anyhow::ensure!(
        listed == STABLE,
        "{listed} peers registered after the run, expected {STABLE}"
    );
    watcher.abort();

    let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
    Ok(vec![
        Row::new(
            "load",
            "heartbeat_calls_per_s",
            get(&tally.calls) / elapsed,
            "calls/s",
            "64 clients x 100/s",
        ),
        Row::new(
            "load",
            "heartbeat_errors",
            get(&tally.call_errors),
            "",
            "= 0",
        ),
        Row::new(
            "load",
            "registry_changes_per_s",
            get(&tally.registry_ops) / elapsed,
            "changes/s",
            "",
        ),
        Row::new(
            "load",
            "registry_errors",
            get(&tally.registry_errors),
            "",
            "= 0",
        ),
        Row::new("load", "false_downs", get(&tally.downs), "", "= 0"),
        Row::new("load", "rss_before_mib", mib(rss_before), "MiB", ""),
        Row::new(
            "load",
            "rss_first_half_max_mib",
            mib(rss_first_half),
            "MiB",
            "",
        ),
        Row::new(
            "load",
            "rss_second_half_max_mib",
            mib(rss_second_half),
            "MiB",
            "<= first half + 10%",
        ),
        Row::new("load", "rss_after_mib", mib(rss_after), "MiB", ""),
    ])
}
