//! The verdict holds under a storm of reads: a monitor holding 100,000
//! registered peers, with 16 clients walking every `ListPeers` page and
//! opening and cancelling `WatchPeers` snapshots, still convicts a peer
//! killed with `kill -9` within its bound plus one period, keeps the live
//! ones alive, and never counts a pause of its own.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Serve;
use futures_util::StreamExt;
use heartbeater::{
    EventStream, HeartbeatClient, HeartbeatServer, MemoryStore, PeerEventKind, RegisterPeerRequest,
};

/// Registered peers nobody answers for, heartbeated once an hour: they only
/// make the registry large.
const SILENT_PEERS: usize = 100_000;
const CLIENTS: usize = 16;
/// The real peers' period: long enough that a debug build on two cores,
/// busy with the storm, keeps within the pause guard's threshold (half of
/// it) when the node itself is not at fault.
const FREQ: Duration = Duration::from_millis(500);

/// A store holding `SILENT_PEERS` registrations, as a node restarting on a
/// large registry finds it.
fn large_registry() -> Arc<MemoryStore> {
    let store = MemoryStore::new();
    common::fill_registry(&store, SILENT_PEERS);
    Arc::new(store)
}

/// One client of the storm until `stop`: every page of `ListPeers`, then a
/// snapshot watch read for a while and cancelled, again and again. A
/// refusal as busy is part of the storm; it counts, and the client goes on.
async fn storm(port: u16, stop: Arc<AtomicBool>, pages: Arc<AtomicU64>, busy: Arc<AtomicU64>) {
    let Ok(client) = HeartbeatClient::new("127.0.0.1", port, Duration::from_secs(30)) else {
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        let mut token = String::new();
        loop {
            match client.list_peers_page(0, token.clone()).await {
                Ok(page) => {
                    pages.fetch_add(1, Ordering::Relaxed);
                    token = page.next_page_token;
                    if token.is_empty() || stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                Err(_) => {
                    busy.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        match client.watch_peers(true).await {
            Ok(events) => {
                // A few thousand snapshot lines, then the watcher goes away.
                let _ = events.take(3_000).count().await;
            }
            Err(_) => {
                busy.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Waits for a `PeerUp` of each of `ids`.
async fn all_up(events: &mut EventStream, mut waiting: Vec<String>) {
    while !waiting.is_empty() {
        let e = events.next().await.expect("events");
        if e.kind == PeerEventKind::PeerUp {
            waiting.retain(|id| *id != e.peer_id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_reads_does_not_move_the_verdict() {
    let monitor = HeartbeatServer::builder()
        .server_host("127.0.0.1")
        .server_port(0)
        .store(large_registry())
        .max_peers(SILENT_PEERS + 10)
        .build_async()
        .await
        .expect("monitor");
    let addr = monitor.start().await.expect("started");
    let mut events = monitor.events();

    // Three real peers, each its own process.
    let mut peers: Vec<Serve> = (0..3).map(|_| Serve::start(&["--in-memory"])).collect();
    for p in &peers {
        let (host, port) = p.addr.rsplit_once(':').expect("host:port");
        monitor
            .register_peer(RegisterPeerRequest {
                peer_id: p.identity.clone(),
                peer_host: host.into(),
                peer_port: port.parse().expect("port"),
                heartbeat_freq_millis: i64::try_from(FREQ.as_millis()).expect("ms"),
                ..Default::default()
            })
            .await
            .expect("registered");
    }
    let ids: Vec<String> = peers.iter().map(|p| p.identity.clone()).collect();
    tokio::time::timeout(Duration::from_secs(20), all_up(&mut events, ids.clone()))
        .await
        .expect("every real peer up");
    let pauses_before = monitor.pause_stats().pauses;

    // The storm, from threads and a runtime of its own, as from other
    // processes.
    let stop = Arc::new(AtomicBool::new(false));
    let pages = Arc::new(AtomicU64::new(0));
    let busy = Arc::new(AtomicU64::new(0));
    let storm_thread = {
        let (stop, pages, busy) = (stop.clone(), pages.clone(), busy.clone());
        std::thread::spawn(move || {
            // One thread for 16 clients: the storm is of requests, not of
            // the client side's own CPU.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let clients: Vec<_> = (0..CLIENTS)
                    .map(|_| {
                        tokio::spawn(storm(
                            addr.port(),
                            stop.clone(),
                            pages.clone(),
                            busy.clone(),
                        ))
                    })
                    .collect();
                for c in clients {
                    let _ = c.await;
                }
            });
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;

    // kill -9 one peer, in the middle of the storm.
    let victim = ids[0].clone();
    let killed = Instant::now();
    let mut dead = peers.remove(0);
    dead.child.kill().expect("SIGKILL");
    dead.child.wait().expect("reaped");
    let mut detected = None;
    let mut false_downs = Vec::new();
    let watch_until = killed + Duration::from_secs(8);
    while Instant::now() < watch_until {
        let left = watch_until.saturating_duration_since(Instant::now());
        let Ok(Some(e)) = tokio::time::timeout(left, events.next()).await else {
            break;
        };
        if e.kind == PeerEventKind::PeerDown {
            if e.peer_id == victim {
                detected.get_or_insert(killed.elapsed());
            } else if ids.contains(&e.peer_id) {
                false_downs.push(e.peer_id.clone());
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    storm_thread.join().expect("storm");
    let pauses = monitor.pause_stats().pauses - pauses_before;
    monitor.stop().await.expect("stopped");

    let pages = pages.load(Ordering::Relaxed);
    let busy = busy.load(Ordering::Relaxed);
    eprintln!(
        "read storm: detected in {detected:?}, {pages} pages served, {busy} refused as busy, {pauses} pauses"
    );
    // The count rule's bound: 3 periods and the timeout (one period), plus
    // one period.
    let bound = FREQ * 3 + FREQ + FREQ;
    let detected = detected.expect("the killed peer was never declared down");
    assert!(
        detected <= bound,
        "detected after {detected:?}, bound {bound:?}"
    );
    assert!(
        false_downs.is_empty(),
        "live peers declared down: {false_downs:?}"
    );
    assert_eq!(pauses, 0, "the monitor counted pauses of its own");
    assert!(pages > 100, "the storm did not happen: {pages} pages");
}
