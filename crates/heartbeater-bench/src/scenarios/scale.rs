//! `scale` (on request): one node, on RocksDB, watching 1,000 / 10,000 /
//! 100,000 / 1,000,000 peers. For each size: the bytes each peer costs, how
//! long registering every peer over gRPC takes (each acknowledged only once
//! synced), how long listing them all and restoring them after a restart
//! take, the node's cores and scheduler lateness at a fixed total of 20,000
//! heartbeats a second, and how far past its bound a killed sample of
//! answering peers is declared down.
//!
//! Every peer answers, with its own identity, from its own address: peer `i`
//! is registered at `127.x.y.z:port` (the whole of 127.0.0.0/8 is this
//! machine's), and one `addressed` responder answers every address on that
//! port, as the peer registered there and from that address (see
//! [`crate::roles::addressed`]). What the node does per peer, a socket
//! address, a sealed token, an identity to check, is the same as with a
//! responder per peer; the responder's own cost is not the node's and is
//! not measured.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{StreamExt, TryStreamExt};
use heartbeater::store::{RegistryStore, RocksDbStore};
use heartbeater::RegisterPeerRequest;

use super::{node_client, percentile};
use crate::child::Helper;
use crate::procfs;
use crate::report::Row;

/// The sizes measured, each up to `--scale-max`.
pub const SIZES: [usize; 4] = [1_000, 10_000, 100_000, 1_000_000];

/// Heartbeats a second the node sends in total, whatever the size: the
/// cost measured is that of holding and scheduling many peers, not of a
/// heartbeat rate growing with them (the peer-path scenario measures that).
const TOTAL_RATE: usize = 20_000;

/// Peers heartbeated every second and killed to measure detection: the
/// rest share what is left of [`TOTAL_RATE`].
const SAMPLE: usize = 100;
const SAMPLE_PERIOD: Duration = Duration::from_secs(1);
/// `max_missed x period + timeout`, the defaults.
const SAMPLE_BOUND: Duration = Duration::from_secs(4);

/// Registrations in flight at once.
const CLIENTS: usize = 64;

/// The address of peer `i`: 127.a.b.c with c from 1 to 254, so that no
/// peer sits on a network or broadcast-looking address.
pub fn peer_addr(i: usize) -> Ipv4Addr {
    let c = 1 + (i % 254) as u8;
    let rest = i / 254;
    let b = (rest % 256) as u8;
    let a = (1 + rest / 256).min(255) as u8;
    Ipv4Addr::new(127, a, b, c)
}

/// The inverse of [`peer_addr`], for addresses it made.
pub fn peer_index(addr: Ipv4Addr) -> Option<usize> {
    let [l, a, b, c] = addr.octets();
    if l != 127 || a == 0 || c == 0 || c == 255 {
        return None;
    }
    Some(((usize::from(a) - 1) * 256 + usize::from(b)) * 254 + usize::from(c) - 1)
}

/// The identity of peer `i`.
pub fn peer_id(i: usize) -> String {
    format!("peer-{i:07}")
}

/// The period of the peers outside the sample at `size` peers.
fn bulk_period(size: usize) -> Duration {
    let bulk = size.saturating_sub(SAMPLE).max(1) as f64;
    let rate = (TOTAL_RATE - SAMPLE) as f64;
    Duration::from_millis(((bulk / rate) * 1000.0).round().max(1.0) as u64)
}

fn metric(name: &str, size: usize) -> &'static str {
    // A handful of rows per run: leaked once, alive until the run ends.
    Box::leak(format!("{name}_{size}").into_boxed_str())
}

async fn register(
    client: &heartbeater::HeartbeatClient,
    size: usize,
    port: u16,
) -> anyhow::Result<()> {
    let bulk = bulk_period(size).as_millis() as i64;
    futures_util::stream::iter(0..size)
        .map(|i| {
            let client = client.clone();
            let freq = if i < SAMPLE {
                SAMPLE_PERIOD.as_millis() as i64
            } else {
                bulk
            };
            let request = RegisterPeerRequest {
                peer_id: peer_id(i),
                peer_host: peer_addr(i).to_string(),
                peer_port: u32::from(port),
                heartbeat_freq_millis: freq,
                ..Default::default()
            };
            async move { client.register_peer(request).await.map(drop) }
        })
        .buffer_unordered(CLIENTS)
        .try_collect::<()>()
        .await
        .context("registering")
}

/// Waits until the node has `n` peers, every one scheduled (any state):
/// what a restarted node owes before it is ready.
async fn wait_counts(
    node: &mut Helper,
    n: usize,
    field: &str,
    patience: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let counts = node.ask("counts").await?;
        let have = if field == "total" {
            ["unknown", "alive", "unreachable"]
                .iter()
                .map(|k| counts[*k].as_u64().unwrap_or(0))
                .sum()
        } else {
            counts[field].as_u64().unwrap_or(0)
        };
        if have >= n as u64 {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < patience,
            "{have} of {n} peers {field} after {patience:?} ({counts})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How far past the bound each killed sample peer was declared down (ms),
/// and how many peers outside the sample were declared down meanwhile.
async fn detection(
    client: &heartbeater::HeartbeatClient,
    responder: &mut Helper,
) -> anyhow::Result<(Vec<u64>, u64)> {
    let mut downs = super::Downs::watch(client).await?;
    // A quiet stretch first: any PeerDown in it is a false one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    responder.ask(&format!("silence 0 {SAMPLE}")).await?;
    let killed = Instant::now();
    tokio::time::sleep(SAMPLE_BOUND * 3).await;
    let victims: HashSet<String> = (0..SAMPLE).map(peer_id).collect();
    let (over, false_downs) = downs.score(&victims, killed, SAMPLE_BOUND, SAMPLE_BOUND * 3);
    responder.ask("silence 0 0").await?;
    Ok((over, false_downs))
}

/// Opening the node's RocksDB and reading every record, in this process:
/// the floor of a restore.
fn raw_restore(dir: &std::path::Path, size: usize) -> anyhow::Result<f64> {
    // The first open after the node's end replays its write-ahead log into
    // table files; done once, so that both opens find the same directory.
    drop(RocksDbStore::open(dir)?);
    let t = Instant::now();
    let store = RocksDbStore::open(dir)?;
    let n = store.load_peers()?.records.len();
    let raw = t.elapsed().as_secs_f64();
    anyhow::ensure!(n == size, "the store holds {n} of {size} peers");
    Ok(raw)
}

async fn one_size(size: usize, window: Duration) -> anyhow::Result<Vec<Row>> {
    eprintln!("  scale: {size} peers");
    let dir = tempfile::tempdir()?;
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let mut responder = Helper::start(&["addressed"]).await?;
    let port = u16::try_from(responder.ready["port"].as_u64().unwrap_or(0))?;
    let mut node = Helper::start(&["node", "--data-dir", &dir_arg]).await?;
    let pid = node.pid()?;
    let client = node_client(node.ready["addr"].as_str().unwrap_or_default())?;
    client.list_peers().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_empty = procfs::rss_bytes(pid)?;

    let t = Instant::now();
    register(&client, size, port).await?;
    let register_s = t.elapsed().as_secs_f64();
    eprintln!("  scale: {size} registered in {register_s:.1} s");
    // Each peer's first heartbeat is due at its registration; the bulk
    // period bounds how long the last one waits for its answer.
    let patience = Duration::from_secs(60) + bulk_period(size) * 2;
    wait_counts(&mut node, size, "alive", patience).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_full = procfs::rss_bytes(pid)?;
    let bytes_per_peer = rss_full.saturating_sub(rss_empty) as f64 / size as f64;

    node.ask("mark").await?;
    let cpu0 = procfs::cpu_seconds(pid)?;
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let cores = (procfs::cpu_seconds(pid)? - cpu0) / t.elapsed().as_secs_f64();
    let lateness = node.ask("lateness").await?;
    let lateness_p99_ms = lateness["p99_us"].as_f64().unwrap_or(f64::NAN) / 1000.0;

    let (over, false_downs) = detection(&client, &mut responder).await?;

    let t = Instant::now();
    let listed = client.list_peers().await?.peers.len();
    let list_all_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(listed == size, "listed {listed} of {size} peers");

    drop(node);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let raw = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || raw_restore(&dir, size)
    })
    .await??;
    let t = Instant::now();
    let mut node = Helper::start(&["node", "--data-dir", &dir_arg]).await?;
    // The node reports ready once it has restored its table; counted
    // anyway, so that a node that got ready early cannot pass.
    wait_counts(&mut node, size, "total", Duration::from_secs(300)).await?;
    let restore_s = t.elapsed().as_secs_f64();
    drop(node);

    eprintln!(
        "  scale: {size} peers: {bytes_per_peer:.0} bytes/peer, register {register_s:.1} s, \
         restore {restore_s:.2} s (raw {raw:.2} s), list {list_all_s:.2} s, {cores:.3} cores, \
         lateness p99 {lateness_p99_ms:.2} ms, detection p99 +{} ms, {false_downs} false downs",
        percentile(&over, 0.99)
    );
    Ok(vec![
        Row::new(
            "scale",
            metric("bytes_per_peer", size),
            bytes_per_peer,
            "bytes",
            if size == 1_000_000 { "<= 256" } else { "" },
        ),
        Row::new("scale", metric("register_s", size), register_s, "s", ""),
        Row::new(
            "scale",
            metric("restore_s", size),
            restore_s,
            "s",
            if size == 1_000_000 {
                "ratio <= 1.5"
            } else {
                ""
            },
        )
        .against("RocksDB open + read", raw),
        Row::new("scale", metric("list_all_s", size), list_all_s, "s", ""),
        Row::new("scale", metric("cores", size), cores, "cores", ""),
        Row::new(
            "scale",
            metric("lateness_p99_ms", size),
            lateness_p99_ms,
            "ms",
            "",
        ),
        Row::new(
            "scale",
            metric("detect_p99_over_bound_ms", size),
            percentile(&over, 0.99),
            "ms",
            "",
        ),
        Row::new(
            "scale",
            metric("false_downs", size),
            false_downs as f64,
            "peers",
            "0",
        ),
    ])
}

pub async fn run(s: &super::Settings) -> anyhow::Result<Vec<Row>> {
    let window = if s.quick {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(10)
    };
    let mut rows = Vec::new();
    for size in SIZES.into_iter().filter(|&n| n <= s.scale_max) {
        rows.extend(one_size(size, window).await?);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_peer_has_its_own_address_and_finds_its_index_back() {
        let indexes: std::collections::BTreeSet<usize> = (0..1_000_000)
            .step_by(7)
            .chain([253, 254, 255, 65_024, 999_998, 999_999])
            .collect();
        let mut seen = HashSet::new();
        for &i in &indexes {
            let addr = peer_addr(i);
            assert_eq!(peer_index(addr), Some(i), "{addr}");
            assert!(seen.insert(addr), "{addr} given twice");
            let last = addr.octets()[3];
            assert!((1..=254).contains(&last), "{addr}");
        }
    }

    #[test]
    fn the_bulk_shares_the_fixed_rate() {
        assert_eq!(bulk_period(1_000_000), Duration::from_millis(50_246));
        assert_eq!(bulk_period(1_000), Duration::from_millis(45));
    }
}
