//! `accuracy`: false alarms and detection time, for each detector, under the
//! same faults at the same time.
//!
//! Four monitor nodes watch the same peers (responder sockets at 100 ms,
//! three misses, timeout one period) through one lossy relay in this
//! process (the kernel has no `netem`): the plain count rule with the pause
//! guard off (the baseline), the count rule with the guard (the default),
//! phi accrual with the guard, and the count rule with `max_missed` 5 and
//! `rise` 2 (`lossy`, the configuration suggested for lossy links). The
//! phases, each as long as the run asks (`HEARTBEATER_ACCURACY_PHASE_SECS`):
//!
//! 1. `jitter_loss1`: every datagram delayed 0-20 ms (20% of the period)
//!    and 1% lost, each way;
//! 2. `loss5`: the same jitter, 5% lost each way;
//! 3. `cpu`: jitter and 1% loss, with both cores kept busy by spinning
//!    threads;
//! 4. `sigstop`: jitter and 1% loss, every monitor stopped with SIGSTOP for
//!    0.5, 1, 2, 3 and 5 s in turn;
//!
//! then `kills`: a tenth of the peers black-holed at random moments, each
//! timed from its black-holing to its `PeerDown` on each monitor.
//!
//! Last, `lossy_link` (the Rapid paper's case): two monitors with a cluster
//! key reach half as many peers through a link losing 80% of datagrams each
//! way, which a third node reaches cleanly; one monitor asks it for indirect
//! probes (`false_downs_per_peer_hour_indirect`), the other does not (its
//! baseline in the same run).
//!
//! The relay carries datagrams and TCP alike, so a monitor's second opinion
//! (a gRPC `Heartbeat` after a lost datagram, answered by the responder)
//! works as it does between real nodes; loss applies to datagrams only
//! (TCP retransmits), jitter to both.
//!
//! Every peer is alive during the phases, so every `PeerDown` there is
//! false. Figures: false downs per peer-hour, flaps (a false down and the
//! `PeerUp` after it) per peer per 10 minutes, and the p99 detection time of
//! the kills, each against the plain count rule of the same run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use heartbeater::proto::PeerEventKind;
use tokio::net::UdpSocket;

use super::{node_client, percentile, responders, Settings};
use crate::child::Helper;
use crate::report::Row;

const FREQ_MS: i64 = 100;
const JITTER: Duration = Duration::from_millis(20);

/// The monitors, baseline first: name, node role arguments, and the
/// `max_missed` and `rise` their registrations ask for (`None`: defaults).
/// `lossy` is the configuration DETECTION.md suggests for lossy links.
type Monitor = (
    &'static str,
    &'static [&'static str],
    Option<u32>,
    Option<u32>,
);
const DETECTORS: [Monitor; 4] = [
    ("count", &["node", "--pause-off"], None, None),
    ("count_guard", &["node"], None, None),
    ("phi_guard", &["node", "--phi"], None, None),
    ("lossy", &["node"], Some(5), Some(2)),
];
const BASELINE: &str = "count rule, no pause guard";

/// What the relay does to each datagram right now, shared with its tasks.
#[derive(Default)]
struct Impairment {
    /// Loss per direction, in parts per million.
    loss_ppm: AtomicU32,
    /// Jitter, in microseconds: each datagram waits a random 0..jitter.
    jitter_micros: AtomicU32,
}

/// One relayed peer: its public address (what the monitors register) and
/// whether it is black-holed (a dead peer).
struct RelayedPeer {
    addr: SocketAddr,
    identity: String,
    dead: Arc<AtomicBool>,
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Sends `bytes` to `to` from `socket` after the current jitter, unless the
/// current loss drops it or the peer is dead.
fn forward(
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    bytes: Vec<u8>,
    impair: &Impairment,
    dead: &AtomicBool,
    rng: &mut u64,
) {
    if dead.load(Ordering::Relaxed) {
        return;
    }
    let loss = u64::from(impair.loss_ppm.load(Ordering::Relaxed));
    if xorshift(rng) % 1_000_000 < loss {
        return;
    }
    let jitter = u64::from(impair.jitter_micros.load(Ordering::Relaxed)).max(1);
    let delay = Duration::from_micros(xorshift(rng) % jitter);
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = socket.send_to(&bytes, to).await;
    });
}

/// A relay for the responder on `port`: datagrams from each monitor go out
/// through an upstream socket of their own, so that answers find their way
/// back.
async fn relay(
    port: u16,
    identity: String,
    impair: Arc<Impairment>,
    seed: u64,
) -> anyhow::Result<RelayedPeer> {
    relay_sparing(port, identity, impair, None, seed).await
}

/// [`relay`], except for the datagrams of `spared.0` (both ways), which
/// get `spared.1` instead: one node's clean path to a peer the others reach
/// through a bad link.
async fn relay_sparing(
    port: u16,
    identity: String,
    impair: Arc<Impairment>,
    spared: Option<(SocketAddr, Arc<Impairment>)>,
    seed: u64,
) -> anyhow::Result<RelayedPeer> {
    // TCP and UDP on one port, as a node listens: the monitors' second
    // opinion (a gRPC call after a lost datagram) goes through the relay
    // too.
    let (tcp, public) = loop {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = tcp.local_addr()?.port();
        if let Ok(udp) = UdpSocket::bind(("127.0.0.1", port)).await {
            break (tcp, Arc::new(udp));
        }
    };
    let addr = public.local_addr()?;
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    let dead = Arc::new(AtomicBool::new(false));
    // `HEARTBEATER_ACCURACY_DATAGRAMS_ONLY=1`: no TCP through the relay, so
    // the monitors judge on datagram evidence alone, as keyed nodes do.
    if std::env::var_os("HEARTBEATER_ACCURACY_DATAGRAMS_ONLY").is_none() {
        tokio::spawn(relay_tcp(tcp, target, impair.clone(), dead.clone(), seed));
    } else {
        drop(tcp);
    }
    let task_dead = dead.clone();
    tokio::spawn(async move {
        let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut rng = seed | 1;
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = public.recv_from(&mut buf).await {
            let impair = match &spared {
                Some((addr, clean)) if *addr == from => clean.clone(),
                _ => impair.clone(),
            };
            let upstream = match upstreams.get(&from) {
                Some(u) => u.clone(),
                None => {
                    let Ok(u) = UdpSocket::bind("127.0.0.1:0").await else {
                        continue;
                    };
                    let u = Arc::new(u);
                    upstreams.insert(from, u.clone());
                    let (back, public, impair, dead) =
                        (u.clone(), public.clone(), impair.clone(), task_dead.clone());
                    tokio::spawn(async move {
                        let mut rng = (seed ^ 0x9e37_79b9_7f4a_7c15) | 1;
                        let mut buf = vec![0u8; 2048];
                        while let Ok((n, _)) = back.recv_from(&mut buf).await {
                            forward(
                                public.clone(),
                                from,
                                buf[..n].to_vec(),
                                &impair,
                                &dead,
                                &mut rng,
                            );
                        }
                    });
                    u
                }
            };
            forward(
                upstream,
                target,
                buf[..n].to_vec(),
                &impair,
                &task_dead,
                &mut rng,
            );
        }
    });
    Ok(RelayedPeer {
        addr,
        identity,
        dead,
    })
}

/// Relays each TCP connection to `target`, every chunk delayed by the
/// current jitter (in order: TCP has its own retransmission, so loss is
/// left to the datagrams). A dead peer's connections go silent, as a
/// black-holed host's do.
async fn relay_tcp(
    listener: tokio::net::TcpListener,
    target: SocketAddr,
    impair: Arc<Impairment>,
    dead: Arc<AtomicBool>,
    seed: u64,
) {
    while let Ok((client, _)) = listener.accept().await {
        let (impair, dead) = (impair.clone(), dead.clone());
        tokio::spawn(async move {
            let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                return;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (from_client, to_client) = client.into_split();
            let (from_server, to_server) = server.into_split();
            tokio::spawn(pipe(
                from_client,
                to_server,
                impair.clone(),
                dead.clone(),
                seed,
            ));
            pipe(from_server, to_client, impair, dead, seed ^ 0xabcd).await;
        });
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    impair: Arc<Impairment>,
    dead: Arc<AtomicBool>,
    seed: u64,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let mut rng = seed | 1;
    let mut last_due = tokio::time::Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if dead.load(Ordering::Relaxed) {
            continue;
        }
        let jitter = u64::from(impair.jitter_micros.load(Ordering::Relaxed)).max(1);
        let due = tokio::time::Instant::now() + Duration::from_micros(xorshift(&mut rng) % jitter);
        last_due = last_due.max(due);
        if tx.send((last_due, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// One `PeerDown` or `PeerUp` a monitor reported, with the node's own
/// timestamp (microseconds since the Unix epoch).
#[derive(Debug, Clone)]
struct Seen {
    peer_id: String,
    down: bool,
    at_micros: i64,
}

fn unix_micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Keeps both cores busy until `stop`.
fn burn(stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..10_000 {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    }
                    std::hint::black_box(x);
                }
            })
        })
        .collect()
}

fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status();
}

struct Phase {
    name: &'static str,
    from_micros: i64,
    until_micros: i64,
}

pub async fn run(s: &Settings) -> anyhow::Result<Vec<Row>> {
    let (peers_n, mut phase) = if s.quick {
        (100, Duration::from_secs(15))
    } else {
        (200, Duration::from_secs(60))
    };
    // Rare events need long phases: `HEARTBEATER_ACCURACY_PHASE_SECS`.
    if let Some(secs) = std::env::var("HEARTBEATER_ACCURACY_PHASE_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        phase = Duration::from_secs(secs.max(20));
    }
    let impair = Arc::new(Impairment::default());
    impair
        .jitter_micros
        .store(JITTER.as_micros() as u32, Ordering::Relaxed);
    impair.loss_ppm.store(10_000, Ordering::Relaxed);
    let (_responders, groups) = responders(peers_n, peers_n).await?;
    let mut peers = Vec::new();
    for (i, (port, identity)) in groups.into_iter().flatten().enumerate() {
        // Seeds far apart: `| 1` (xorshift needs a non-zero state) would
        // give neighbours such as 0x5eee and 0x5eef the same sequence, and
        // so the same losses at the same moments.
        let seed = (0x5eed + i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        peers.push(relay(port, identity, impair.clone(), seed).await?);
    }

    // The monitors, each watched from here.
    let mut monitors = Vec::new();
    let seen: Vec<Arc<Mutex<Vec<Seen>>>> = (0..DETECTORS.len()).map(|_| Arc::default()).collect();
    for (i, (_, args, max_missed, rise)) in DETECTORS.iter().enumerate() {
        let node = Helper::start(args).await?;
        let client = node_client(node.ready["addr"].as_str().unwrap_or_default())?;
        let mut events = client.watch_peers(false).await?;
        let log = seen[i].clone();
        tokio::spawn(async move {
            while let Some(Ok(e)) = events.next().await {
                let down = e.kind == PeerEventKind::PeerDown as i32;
                if down || e.kind == PeerEventKind::PeerUp as i32 {
                    if let Ok(mut log) = log.lock() {
                        log.push(Seen {
                            peer_id: e.peer_id,
                            down,
                            at_micros: e.timestamp_micros,
                        });
                    }
                }
            }
        });
        for p in &peers {
            client
                .register_peer(heartbeater::RegisterPeerRequest {
                    max_missed: *max_missed,
                    rise: *rise,
                    ..super::registration(p.addr.port(), p.identity.clone(), FREQ_MS)
                })
                .await?;
        }
        monitors.push((node, client));
    }
    // Everyone up before the clock starts.
    for (node, _) in &mut monitors {
        super::wait_all_alive(node, peers.len(), Duration::from_secs(60)).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut phases = Vec::new();
    let run_phase = |name: &'static str, from: SystemTime| Phase {
        name,
        from_micros: unix_micros(from),
        until_micros: unix_micros(SystemTime::now()),
    };
    let t = SystemTime::now();
    tokio::time::sleep(phase).await;
    phases.push(run_phase("jitter_loss1", t));

    impair.loss_ppm.store(50_000, Ordering::Relaxed);
    let t = SystemTime::now();
    tokio::time::sleep(phase).await;
    phases.push(run_phase("loss5", t));
    impair.loss_ppm.store(10_000, Ordering::Relaxed);

    let stop = Arc::new(AtomicBool::new(false));
    let burners = burn(stop.clone());
    let t = SystemTime::now();
    tokio::time::sleep(phase).await;
    stop.store(true, Ordering::Relaxed);
    for b in burners {
        let _ = b.join();
    }
    phases.push(run_phase("cpu", t));

    let pids: Vec<u32> = monitors
        .iter()
        .filter_map(|(node, _)| node.pid().ok())
        .collect();
    let t = SystemTime::now();
    let started = Instant::now();
    for pause_ms in [500u64, 1000, 2000, 3000, 5000] {
        for pid in &pids {
            signal(*pid, "STOP");
        }
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        for pid in &pids {
            signal(*pid, "CONT");
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    if let Some(left) = phase.checked_sub(started.elapsed()) {
        tokio::time::sleep(left).await;
    }
    phases.push(run_phase("sigstop", t));

    // Kills: a tenth of the peers, 200 ms apart.
    let kills = (peers.len() / 10).max(1);
    let mut killed: HashMap<String, i64> = HashMap::new();
    for p in peers.iter().take(kills) {
        killed.insert(p.identity.clone(), unix_micros(SystemTime::now()));
        p.dead.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;

    let mut rows = Vec::new();
    let mut figures: Vec<(f64, f64, f64)> = Vec::new();
    for (i, (name, ..)) in DETECTORS.iter().enumerate() {
        let log = seen[i].lock().map(|l| l.clone()).unwrap_or_default();
        let (mut downs, mut flaps) = (0u64, 0u64);
        let mut open: HashMap<&str, bool> = HashMap::new();
        let mut per_phase = Vec::new();
        for ph in &phases {
            let mut phase_downs = 0u64;
            for e in log.iter().filter(|e| {
                e.at_micros >= ph.from_micros
                    && e.at_micros < ph.until_micros
                    && !killed.contains_key(&e.peer_id)
            }) {
                if e.down {
                    phase_downs += 1;
                    if std::env::var_os("HEARTBEATER_ACCURACY_TRACE").is_some() {
                        eprintln!(
                            "accuracy {name}: false PeerDown of {} in {} at +{} ms",
                            e.peer_id,
                            ph.name,
                            (e.at_micros - ph.from_micros) / 1000
                        );
                    }
                    open.insert(&e.peer_id, true);
                } else if open.remove(e.peer_id.as_str()).is_some() {
                    flaps += 1;
                }
            }
            downs += phase_downs;
            per_phase.push((ph.name, phase_downs));
        }
        let watched_micros: i64 = phases.iter().map(|p| p.until_micros - p.from_micros).sum();
        let peer_hours = peers.len() as f64 * watched_micros as f64 / 3.6e9;
        let mut detect: Vec<u64> = killed
            .iter()
            .filter_map(|(id, at)| {
                log.iter()
                    .find(|e| e.down && &e.peer_id == id && e.at_micros >= *at)
                    .map(|e| u64::try_from((e.at_micros - at) / 1000).unwrap_or(0))
            })
            .collect();
        detect.sort_unstable();
        let missed_kills = killed.len() - detect.len();
        eprintln!(
            "accuracy {name}: false downs by phase {per_phase:?}, flaps {flaps}, \
             kills detected {}/{} (p50 {} ms, max {} ms)",
            detect.len(),
            killed.len(),
            percentile(&detect, 0.5),
            detect.last().copied().unwrap_or(0)
        );
        let p99 = if missed_kills > 0 {
            f64::INFINITY
        } else {
            percentile(&detect, 0.99)
        };
        figures.push((
            downs as f64 / peer_hours,
            flaps as f64 / (peer_hours * 6.0),
            p99,
        ));
        for (phase, n) in per_phase {
            let metric: &'static str =
                Box::leak(format!("false_downs_{phase}_{name}").into_boxed_str());
            rows.push(Row::new("accuracy", metric, n as f64, "downs", ""));
        }
    }
    let (base_fd, base_flaps, base_p99) = figures[0];
    for (i, (name, ..)) in DETECTORS.iter().enumerate() {
        let (fd, flaps, p99) = figures[i];
        let metric =
            |m: &str| -> &'static str { Box::leak(format!("{m}_{name}").into_boxed_str()) };
        rows.push(
            Row::new(
                "accuracy",
                metric("false_downs_per_peer_hour"),
                fd,
                "/peer-hour",
                "50x fewer",
            )
            .against(BASELINE, base_fd),
        );
        rows.push(
            Row::new(
                "accuracy",
                metric("flaps_per_peer_10min"),
                flaps,
                "/peer/10min",
                "<= 1",
            )
            .against(BASELINE, base_flaps),
        );
        rows.push(
            Row::new(
                "accuracy",
                metric("detect_p99_ms"),
                p99,
                "ms",
                "<= bound + 1 period",
            )
            .against(BASELINE, base_p99),
        );
    }
    // The next run has the machine to itself.
    drop(monitors);
    drop(_responders);
    rows.extend(lossy_link(peers_n / 2, phase).await?);
    Ok(rows)
}

/// Loss on the lossy link, each way: one round trip in 25 gets through.
const BAD_LINK_LOSS_PPM: u32 = 800_000;
const INDIRECT_BASELINE: &str = "count rule without indirect probes, same link";

/// The Rapid-style run: two monitors with a cluster key (datagrams only)
/// reach `n` peers through a link that loses 80% of datagrams each way,
/// while a third node, the helper, reaches the same peers cleanly (the
/// relay spares its datagrams) and is itself reached cleanly by both
/// monitors. One monitor has indirect probes on (the default), the other
/// off: every `PeerDown` in the phase is false, since every peer runs and
/// one node reaches it. Then a tenth of the peers are black-holed (for the
/// helper too), and the indirect monitor's detection is timed against its
/// bound, `max_missed x period + 2 x timeout`.
async fn lossy_link(n: usize, phase: Duration) -> anyhow::Result<Vec<Row>> {
    let (_responders, groups) = super::responders_with(n, n, Some(true)).await?;
    let helper = Helper::start_with(&["node"], Some(true)).await?;
    let helper_addr: SocketAddr = helper.ready["addr"].as_str().unwrap_or_default().parse()?;
    let helper_id = helper.ready["identity"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let bad = Arc::new(Impairment::default());
    let clean = Arc::new(Impairment::default());
    let mut peers = Vec::new();
    for (i, (port, identity)) in groups.into_iter().flatten().enumerate() {
        let seed = (0x1d1e + i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let spared = Some((helper_addr, clean.clone()));
        peers.push(relay_sparing(port, identity, bad.clone(), spared, seed).await?);
    }
    let mut monitors = Vec::new();
    let seen: Vec<Arc<Mutex<Vec<Seen>>>> = (0..2).map(|_| Arc::default()).collect();
    for (i, args) in [&["node", "--no-indirect"][..], &["node"][..]]
        .into_iter()
        .enumerate()
    {
        let node = Helper::start_with(args, Some(true)).await?;
        let client = node_client(node.ready["addr"].as_str().unwrap_or_default())?;
        let mut events = client.watch_peers(false).await?;
        let log = seen[i].clone();
        tokio::spawn(async move {
            while let Some(Ok(e)) = events.next().await {
                let down = e.kind == PeerEventKind::PeerDown as i32;
                if down || e.kind == PeerEventKind::PeerUp as i32 {
                    if let Ok(mut log) = log.lock() {
                        log.push(Seen {
                            peer_id: e.peer_id,
                            down,
                            at_micros: e.timestamp_micros,
                        });
                    }
                }
            }
        });
        client
            .register_peer(super::registration(
                helper_addr.port(),
                helper_id.clone(),
                FREQ_MS,
            ))
            .await?;
        for p in &peers {
            client
                .register_peer(super::registration(
                    p.addr.port(),
                    p.identity.clone(),
                    FREQ_MS,
                ))
                .await?;
        }
        monitors.push((node, client));
    }
    // Everyone up over a clean link before it goes bad.
    for (node, _) in &mut monitors {
        super::wait_all_alive(node, peers.len() + 1, Duration::from_secs(60)).await?;
    }
    bad.loss_ppm.store(BAD_LINK_LOSS_PPM, Ordering::Relaxed);
    let from = unix_micros(SystemTime::now());
    tokio::time::sleep(phase).await;
    let until = unix_micros(SystemTime::now());
    // Kills: a tenth of the peers, 200 ms apart, dead for every node.
    let mut killed: HashMap<String, i64> = HashMap::new();
    for p in peers.iter().take((peers.len() / 10).max(1)) {
        killed.insert(p.identity.clone(), unix_micros(SystemTime::now()));
        p.dead.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let peer_hours = peers.len() as f64 * (until - from) as f64 / 3.6e9;
    let mut figures = Vec::new();
    for (i, name) in ["indirect_off", "indirect"].into_iter().enumerate() {
        let log = seen[i].lock().map(|l| l.clone()).unwrap_or_default();
        let downs = log
            .iter()
            .filter(|e| e.down && e.at_micros >= from && e.at_micros < until)
            .count();
        let mut detect: Vec<u64> = killed
            .iter()
            .filter_map(|(id, at)| {
                log.iter()
                    .find(|e| e.down && &e.peer_id == id && e.at_micros >= *at)
                    .map(|e| u64::try_from((e.at_micros - at) / 1000).unwrap_or(0))
            })
            .collect();
        detect.sort_unstable();
        let p99 = if detect.len() < killed.len() {
            f64::INFINITY
        } else {
            percentile(&detect, 0.99)
        };
        let work = monitors[i].0.ask("work").await.unwrap_or_default();
        eprintln!(
            "accuracy {name}: 80% loss to {} peers a helper reaches cleanly: {downs} false downs \
             in {:.1} s, indirect rounds {} (kept {}), kills detected {}/{} (max {} ms)",
            peers.len(),
            (until - from) as f64 / 1e6,
            work["indirect_rounds"],
            work["indirect_kept"],
            detect.len(),
            killed.len(),
            detect.last().copied().unwrap_or(0)
        );
        figures.push((downs as f64 / peer_hours, p99));
    }
    let (base_fd, base_p99) = figures[0];
    let (fd, p99) = figures[1];
    Ok(vec![
        Row::new(
            "accuracy",
            "false_downs_per_peer_hour_indirect",
            fd,
            "/peer-hour",
            "0",
        )
        .against(INDIRECT_BASELINE, base_fd),
        Row::new(
            "accuracy",
            "detect_p99_ms_indirect",
            p99,
            "ms",
            "<= 3 periods + 2 timeouts (500 ms)",
        )
        .against(INDIRECT_BASELINE, base_p99),
    ])
}
