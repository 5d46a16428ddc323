//! `etcd` (run only when named): Heartbeater against what users run
//! instead, etcd leases, in the same run.
//!
//! - Keepalive cost: our node (RocksDB data directory) heartbeating 10,000
//!   peers at 1 Hz, against a single etcd node keeping 10,000 leases (TTL
//!   3 s) alive for a client that renews each of them once a second over 4
//!   keepalive streams, one connection each (how etcd's own client library
//!   multiplexes a process's leases). The figures are the *server* process's
//!   cores and whole RSS; the clients (our responders, the etcd client in
//!   this process) are not counted on either side.
//! - Durable writes: registrations/s from 64 concurrent clients on a RocksDB
//!   node (the `register` scenario's measurement), against etcd `Put`s from
//!   64 connections, each acknowledged once in etcd's write-ahead log and
//!   fsynced (etcd's default).
//!
//! The bench starts its own `etcd` (Debian's `etcd-server`) on 127.0.0.1
//! with free ports and a temporary data directory, and kills it at the end.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use etcd_client::{Client, ConnectOptions, LeaseKeepAliveStream, LeaseKeeper};
use futures_util::StreamExt;
use tokio::task::JoinSet;

use super::{median, node_client, register_all, responders, wait_all_alive, Settings};
use crate::child::Helper;
use crate::procfs;
use crate::report::Row;

/// Leases on etcd's side, peers on ours.
const LEASES: usize = 10_000;
/// Lease TTL, seconds: three missed renewals at 1 Hz, as our `max_missed`.
const TTL_S: i64 = 3;
/// Keepalive streams (one connection each) the leases are spread over.
const STREAMS: usize = 4;
/// Each stream sends a slice of its leases every tick, so that renewals are
/// spread over the second instead of 10,000 at once.
const TICK: Duration = Duration::from_millis(10);
const TICKS_PER_S: usize = 100;
/// Concurrent clients of the durable-write comparison.
const WRITERS: usize = 64;

const ETCD_KEEPALIVE: &str = "etcd, 10,000 leases renewed at 1 Hz";
const ETCD_PUT: &str = "etcd Put (fsync), 64 connections";

/// What one server costs while keeping 10,000 peers or leases alive.
struct Load {
    cores: f64,
    rss_empty: u64,
    rss_loaded: u64,
    /// Heartbeats acknowledged (ours) or keepalives answered (etcd) per
    /// second in the window: the check that both did the same work.
    renewals_per_s: f64,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The `etcd` binary on PATH.
fn etcd_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
        .context(
            "the etcd scenario needs an `etcd` binary on PATH: install Debian's etcd-server \
             (DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server)",
        )
}

/// A single-node etcd on 127.0.0.1 with a data directory of its own.
/// Killed on drop (and its directory removed), so that an error in the
/// middle of the scenario leaves no server behind.
struct Etcd {
    child: tokio::process::Child,
    dir: tempfile::TempDir,
    endpoint: String,
}

impl Etcd {
    async fn start() -> anyhow::Result<Etcd> {
        let binary = etcd_binary()?;
        let dir = tempfile::tempdir()?;
        // Both listeners are held until both ports are known, so that the
        // two differ; etcd binds them a moment later (a race any other
        // process could win, which the readiness check would report).
        let (client_port, peer_port) = {
            let a = std::net::TcpListener::bind("127.0.0.1:0")?;
            let b = std::net::TcpListener::bind("127.0.0.1:0")?;
            (a.local_addr()?.port(), b.local_addr()?.port())
        };
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        // etcd logs every start at length; kept in the data directory for
        // the error message of a start that fails.
        let log = std::fs::File::create(dir.path().join("etcd.log"))?;
        let child = tokio::process::Command::new(&binary)
            .arg("--name")
            .arg("bench")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .args(["--initial-cluster-state", "new"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut etcd = Etcd {
            child,
            dir,
            endpoint: client_url,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = etcd.child.try_wait()? {
                anyhow::bail!(
                    "etcd exited ({status}) before it was ready:\n{}",
                    etcd.log_tail()
                );
            }
            match etcd.ready().await {
                Ok(version) => {
                    eprintln!("  etcd {version} on {}", etcd.endpoint);
                    return Ok(etcd);
                }
                Err(e) if start.elapsed() > Duration::from_secs(30) => {
                    anyhow::bail!("etcd not ready within 30 s: {e:#}\n{}", etcd.log_tail());
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Ready once a write goes through: a leader is elected and the log
    /// syncs. Returns etcd's version.
    async fn ready(&self) -> anyhow::Result<String> {
        let mut client = self.client(Some(Duration::from_secs(2))).await?;
        client.put("heartbeater-bench/ready", "", None).await?;
        Ok(client.status().await?.version().to_owned())
    }

    /// A client on a connection of its own. `timeout` bounds each call;
    /// keepalive streams take none, as a timeout would end them.
    async fn client(&self, timeout: Option<Duration>) -> anyhow::Result<Client> {
        let mut options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
        if let Some(t) = timeout {
            options = options.with_timeout(t);
        }
        Client::connect([&self.endpoint], Some(options))
            .await
            .with_context(|| format!("connect to etcd at {}", self.endpoint))
    }

    fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("etcd already exited")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("kill etcd")
    }
}

/// Our node keeping 10,000 responders alive at 1 Hz: the `fanout`
/// measurement, on a RocksDB data directory as etcd has one.
async fn ours_keepalive(window: Duration) -> anyhow::Result<Load> {
    let (_responders, groups) = responders(LEASES, 2_500).await?;
    let peers: Vec<(u16, String)> = groups.into_iter().flatten().collect();
    let dir = tempfile::tempdir()?;
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let mut node = Helper::start(&["node", "--data-dir", &dir_arg]).await?;
    let pid = node.pid()?;
    let client = node_client(node.ready["addr"].as_str().context("node addr")?)?;
    // Warm the allocator and the gRPC paths before the empty-node RSS, as
    // the fanout scenario does.
    client.list_peers().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_empty = procfs::rss_bytes(pid)?;

    register_all(&client, &peers, 1000).await?;
    wait_all_alive(&mut node, peers.len(), Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let acked = |work: serde_json::Value| work["acked"].as_u64().context("node work: acked");
    let acked0 = acked(node.ask("work").await?)?;
    let cpu0 = procfs::cpu_seconds(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let cpu = procfs::cpu_seconds(pid)? - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    let acked1 = acked(node.ask("work").await?)?;
    let rss_loaded = procfs::rss_bytes(pid)?;
    let counts = node.ask("counts").await?;
    anyhow::ensure!(
        counts["alive"].as_u64() == Some(peers.len() as u64),
        "peers went down during the window: {counts}"
    );
    Ok(Load {
        cores: cpu / wall,
        rss_empty,
        rss_loaded,
        renewals_per_s: acked1.saturating_sub(acked0) as f64 / wall,
    })
}

/// Renews the leases in `ids` once a second each, a slice every tick, over
/// the stream of `keeper` (whose id is set per request: one stream carries
/// many leases, as etcd's own client does).
async fn send_keepalives(mut keeper: LeaseKeeper, ids: Arc<Mutex<Vec<i64>>>) -> anyhow::Result<()> {
    // The default (burst) catch-up keeps the average at 1 Hz per lease even
    // when this task waits for a core.
    let mut tick = tokio::time::interval(TICK);
    let (mut cursor, mut batch) = (0usize, Vec::new());
    loop {
        tick.tick().await;
        batch.clear();
        {
            let ids = ids
                .lock()
                .map_err(|_| anyhow::anyhow!("lease list poisoned"))?;
            // The list grows while leases are granted: a full cycle of the
            // current list per second, so a lease is never renewed less
            // than once a second.
            for _ in 0..ids.len().div_ceil(TICKS_PER_S) {
                cursor %= ids.len();
                batch.push(ids[cursor]);
                cursor += 1;
            }
        }
        for &id in &batch {
            keeper.id = id;
            keeper.keep_alive().await?;
        }
    }
}

/// Counts etcd's keepalive answers; an answer with no TTL left means the
/// lease had expired before its renewal arrived.
async fn count_answers(
    mut stream: LeaseKeepAliveStream,
    answered: Arc<AtomicU64>,
    expired: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    while let Some(answer) = stream.message().await? {
        answered.fetch_add(1, Ordering::Relaxed);
        if answer.ttl() <= 0 {
            expired.fetch_add(1, Ordering::Relaxed);
        }
    }
    anyhow::bail!("etcd ended a keepalive stream")
}

/// A keepalive task that ended (with an error, since they loop forever)
/// makes the measurement void.
fn check_tasks(tasks: &mut JoinSet<anyhow::Result<()>>) -> anyhow::Result<()> {
    match tasks.try_join_next() {
        Some(ended) => {
            ended??;
            anyhow::bail!("a keepalive task ended")
        }
        None => Ok(()),
    }
}

/// etcd keeping 10,000 leases alive for a client renewing each at 1 Hz.
async fn etcd_keepalive(window: Duration) -> anyhow::Result<Load> {
    let etcd = Etcd::start().await?;
    let pid = etcd.pid()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_empty = procfs::rss_bytes(pid)?;

    let answered = Arc::new(AtomicU64::new(0));
    let expired = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    let (mut lists, mut connections) = (Vec::new(), Vec::new());
    let mut granter = etcd.client(Some(Duration::from_secs(30))).await?;
    // The streams open first, each on its first lease, and every lease
    // joins one as soon as it is granted: granting 10,000 (each a synced
    // write) takes longer than a TTL, so renewing only after the last grant
    // would lose the first leases.
    for _ in 0..STREAMS {
        let first = granter.lease_grant(TTL_S, None).await?.id();
        let mut client = etcd.client(None).await?;
        let (keeper, stream) = client.lease_keep_alive(first).await?;
        let ids = Arc::new(Mutex::new(vec![first]));
        tasks.spawn(send_keepalives(keeper, ids.clone()));
        tasks.spawn(count_answers(stream, answered.clone(), expired.clone()));
        lists.push(ids);
        // Held to the end: the stream's connection goes with its client.
        connections.push(client);
    }
    let mut grants = futures_util::stream::iter(STREAMS..LEASES)
        .map(|i| {
            let mut granter = granter.clone();
            async move { granter.lease_grant(TTL_S, None).await.map(|r| (i, r.id())) }
        })
        .buffer_unordered(WRITERS);
    while let Some(grant) = grants.next().await {
        let (i, id) = grant.context("lease grant")?;
        lists[i % STREAMS]
            .lock()
            .map_err(|_| anyhow::anyhow!("lease list poisoned"))?
            .push(id);
    }
    // Past one TTL with every lease renewed: a renewal that came too late
    // has shown up as an expired lease by then.
    tokio::time::sleep(Duration::from_secs(TTL_S as u64 + 1)).await;
    check_tasks(&mut tasks)?;

    let answered0 = answered.load(Ordering::Relaxed);
    let cpu0 = procfs::cpu_seconds(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let cpu = procfs::cpu_seconds(pid)? - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    let answered1 = answered.load(Ordering::Relaxed);
    let rss_loaded = procfs::rss_bytes(pid)?;
    check_tasks(&mut tasks)?;
    let lost = expired.load(Ordering::Relaxed);
    anyhow::ensure!(
        lost == 0,
        "{lost} etcd leases expired: the keepalive client fell behind, the figures would not be \
         for 10,000 live leases"
    );
    tasks.shutdown().await;
    drop(connections);
    etcd.stop().await?;
    Ok(Load {
        cores: cpu / wall,
        rss_empty,
        rss_loaded,
        renewals_per_s: (answered1 - answered0) as f64 / wall,
    })
}

/// Acknowledged etcd `Put`s per second from 64 connections, each its own
/// writer, on a fresh etcd.
async fn etcd_puts(window: Duration, round: usize) -> anyhow::Result<f64> {
    let etcd = Etcd::start().await?;
    let mut clients = Vec::with_capacity(WRITERS);
    for _ in 0..WRITERS {
        clients.push(etcd.client(Some(Duration::from_secs(30))).await?);
    }
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + window;
    let mut tasks = JoinSet::new();
    for (t, mut client) in clients.into_iter().enumerate() {
        let done = done.clone();
        tasks.spawn(async move {
            let mut i = 0u64;
            while Instant::now() < end {
                // What a registration holds: an id, an address, a period.
                client
                    .put(
                        format!("peers/r{round}-t{t}-{i}"),
                        "127.0.0.1:9 every 3600000 ms",
                        None,
                    )
                    .await?;
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok::<(), etcd_client::Error>(())
        });
    }
    while let Some(ended) = tasks.join_next().await {
        ended?.context("etcd put")?;
    }
    etcd.stop().await?;
    Ok(done.load(Ordering::Relaxed) as f64 / window.as_secs_f64())
}

/// The scenario: keepalive cost, then durable writes, ours and etcd's.
pub async fn run(s: &Settings) -> anyhow::Result<Vec<Row>> {
    // Before a minute of our side: without etcd the run is void anyway.
    etcd_binary()?;
    let window = Duration::from_secs(if s.quick { 5 } else { 10 });
    let ours = ours_keepalive(window).await?;
    let theirs = etcd_keepalive(window).await?;

    let (mut o, mut e) = (Vec::new(), Vec::new());
    for round in 0..s.rounds() {
        e.push(etcd_puts(s.window(), round).await?);
        o.push(super::register::ours(s.window(), round).await?);
    }
    let (o, e) = (median(o), median(e));

    Ok(vec![
        Row::new(
            "etcd",
            "keepalive_cores_ratio",
            ours.cores / theirs.cores,
            "ours/etcd",
            "<= 0.1",
        ),
        Row::new("etcd", "keepalive_cores", ours.cores, "cores", "-")
            .against(ETCD_KEEPALIVE, theirs.cores),
        Row::new(
            "etcd",
            "keepalive_rss_ratio",
            ours.rss_loaded as f64 / theirs.rss_loaded as f64,
            "ours/etcd",
            "<= 0.1",
        ),
        Row::new(
            "etcd",
            "keepalive_rss_mib",
            mib(ours.rss_loaded),
            "MiB",
            "-",
        )
        .against(ETCD_KEEPALIVE, mib(theirs.rss_loaded)),
        Row::new("etcd", "empty_rss_mib", mib(ours.rss_empty), "MiB", "-")
            .against("etcd, no lease", mib(theirs.rss_empty)),
        Row::new(
            "etcd",
            "renewals_per_s",
            ours.renewals_per_s,
            "renewals/s",
            "10000",
        )
        .against(ETCD_KEEPALIVE, theirs.renewals_per_s),
        Row::new("etcd", "durable_puts_ratio", o / e, "ours/etcd", ">= 2"),
        Row::new("etcd", "durable_per_s_c64", o, "writes/s", "-").against(ETCD_PUT, e),
    ])
}
