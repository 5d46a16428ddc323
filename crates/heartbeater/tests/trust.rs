//! Verdicts hold when someone lies to the node or floods it: forged pongs do
//! not keep a dead peer alive, a flood does not delay detection, and with a
//! cluster key only nodes that hold it are heard.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use heartbeater::udp::{answer, Datagram, Kind};
use heartbeater::{HeartbeatServer, Keyring, PeerEventKind, PeerState, RegisterPeerRequest};
use tokio::net::UdpSocket;

/// Scheduling slack on a loaded 2-core CI machine (see detection.rs).
const SLACK: Duration = Duration::from_millis(500);

fn key(byte: u8) -> [u8; 32] {
    [byte; 32]
}

fn ring(keys: &[[u8; 32]]) -> Keyring {
    Keyring::new(keys).expect("valid keys")
}

async fn keyed_node(keyring: Option<Keyring>) -> HeartbeatServer {
    let builder = HeartbeatServer::builder().server_port(0).in_memory();
    let builder = match keyring {
        Some(k) => builder.cluster_keys(k),
        None => builder,
    };
    let server = builder.build().expect("build");
    server.start().await.expect("start");
    server
}

fn fast(peer: &HeartbeatServer) -> RegisterPeerRequest {
    RegisterPeerRequest {
        timeout_millis: Some(50),
        max_missed: Some(3),
        ..registration(peer, 50)
    }
}

/// Detection bound of [`fast`]: `max_missed x frequency + timeout`.
const FAST_BOUND: Duration = Duration::from_millis(3 * 50 + 50);

/// Every token a forger can derive from one genuine token: its peer key and
/// sequence number rewritten to neighbours and extremes, its MAC kept or
/// scrambled.
fn forged_tokens(genuine: [u8; 32]) -> Vec<[u8; 32]> {
    let seq = u64::from_be_bytes(genuine[8..16].try_into().unwrap());
    let mut out = vec![genuine];
    for slot in 0u64..4 {
        for generation in 0u64..3 {
            for s in [seq, seq.wrapping_sub(1), seq.wrapping_add(1), u64::MAX, 0] {
                let mut t = genuine;
                t[..8].copy_from_slice(&((slot << 32) | generation).to_be_bytes());
                t[8..16].copy_from_slice(&s.to_be_bytes());
                out.push(t);
                let mut scrambled = t;
                scrambled[16..]
                    .iter_mut()
                    .for_each(|b| *b = b.wrapping_add(1));
                out.push(scrambled);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_reads_its_pings_cannot_keep_a_killed_peer_alive() {
    let monitor = memory_node().await;
    let monitor_addr = monitor.local_addr().unwrap();
    let victim_dir = tempfile::tempdir().unwrap();
    let victim = node_on(victim_dir.path(), 0).await;
    let victim_id = victim.identity();
    let victim_epoch = victim.epoch();
    let victim_port = victim.local_addr().unwrap().port();
    let mut events = monitor.events();
    monitor.register_peer(fast(&victim)).await.unwrap();
    next_event(&mut events, &victim_id, |k| *k == PeerEventKind::PeerUp).await;

    // The spy: registered as a peer, it answers its own pings honestly (so
    // it stays alive) and, from each, forges pongs for the victim.
    let spy = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let spy_port = spy.local_addr().unwrap().port();
    let forger_victim_id = victim_id.clone();
    let forger = tokio::spawn(async move {
        let (mut buf, mut out) = (vec![0u8; 2048], Vec::new());
        loop {
            let (n, from) = spy.recv_from(&mut buf).await.unwrap();
            if answer(&buf[..n], "spy", 1, None, &mut out).is_ok() {
                spy.send_to(&out, from).await.unwrap();
            }
            let Ok(ping) = Datagram::open(&buf[..n], None) else {
                continue;
            };
            for token in forged_tokens(ping.token) {
                for epoch in [victim_epoch, victim_epoch + 1, u64::MAX] {
                    Datagram {
                        kind: Kind::Pong,
                        token,
                        epoch,
                        identity: &forger_victim_id,
                    }
                    .seal(0, None, &mut out);
                    let _ = spy.send_to(&out, monitor_addr).await;
                }
            }
        }
    });
    monitor
        .register_peer(RegisterPeerRequest {
            peer_id: "spy".into(),
            peer_host: "127.0.0.1".into(),
            peer_port: u32::from(spy_port),
            heartbeat_freq_millis: 50,
            timeout_millis: Some(50),
            max_missed: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_state(&monitor, "spy", PeerState::Alive).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = status(&monitor, &victim_id).await.unwrap();
    assert_eq!(
        (before.state, before.epoch),
        (PeerState::Alive, Some(victim_epoch)),
        "forged pongs changed nothing while the victim lives"
    );

    victim.stop().await.unwrap();
    drop(victim);
    let killed = Instant::now();
    next_event(&mut events, &victim_id, |k| *k == PeerEventKind::PeerDown).await;
    let took = killed.elapsed();
    assert!(
        took <= FAST_BOUND + SLACK,
        "detected after {took:?}, bound {FAST_BOUND:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dead = status(&monitor, &victim_id).await.unwrap();
    assert_eq!(dead.state, PeerState::Unreachable, "{dead:?}");
    assert_eq!(dead.epoch, Some(victim_epoch), "no forged epoch believed");
    let stats = monitor.datagram_stats();
    assert!(stats.forged_tokens > 0, "{stats:?}");
    assert_eq!(
        status(&monitor, "spy").await.unwrap().state,
        PeerState::Alive,
        "the monitor keeps running"
    );

    let reborn = node_on(victim_dir.path(), victim_port).await;
    let restarted = next_event(&mut events, &victim_id, |k| {
        matches!(k, PeerEventKind::Restarted { .. })
    })
    .await;
    assert_eq!(restarted.epoch, Some(reborn.epoch()));
    wait_state(&monitor, &victim_id, PeerState::Alive).await;
    forger.abort();
    reborn.stop().await.unwrap();
    monitor.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_the_udp_port_neither_convicts_a_live_peer_nor_delays_detection() {
    let monitor = memory_node().await;
    let monitor_addr = monitor.local_addr().unwrap();
    // The peer in a runtime of its own, as a peer on another host would be:
    // the flood's threads and the monitor share this test's runtime, and a
    // peer starved of it would be unresponsive, not a live peer.
    let victim = tokio::task::spawn_blocking(|| {
        let victim = heartbeater::blocking::HeartbeatServer::builder()
            .server_port(0)
            .in_memory()
            .build()
            .expect("build");
        victim.start().expect("start");
        victim
    })
    .await
    .unwrap();
    let victim_id = victim.identity();
    let victim_addr = victim.local_addr().unwrap();
    let mut events = monitor.events();
    let period = Duration::from_millis(50);
    monitor
        .register_peer(RegisterPeerRequest {
            peer_id: victim_id.clone(),
            peer_host: victim_addr.ip().to_string(),
            peer_port: u32::from(victim_addr.port()),
            heartbeat_freq_millis: 50,
            timeout_millis: Some(50),
            max_missed: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    next_event(&mut events, &victim_id, |k| *k == PeerEventKind::PeerUp).await;

    // From two other threads, as fast as they can: pings the monitor must
    // answer (its dearest work), pongs it must judge, garbage. More than
    // the monitor can read: its socket never runs dry.
    let stop = Arc::new(AtomicBool::new(false));
    let floods: Vec<_> = (0..FLOODERS)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || flood(monitor_addr, &stop))
        })
        .collect();
    // Longer than any overload is excused (drops for 500 ms): the live
    // peer must stay ALIVE on its merits, its pongs unhindered.
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let during = drain(&mut events);
        assert!(
            !during.iter().any(|e| e.kind == PeerEventKind::PeerDown),
            "a live peer declared down during the flood: {during:?}"
        );
        let now = status(&monitor, &victim_id).await.unwrap();
        assert_eq!(now.state, PeerState::Alive, "during the flood: {now:?}");
    }
    tokio::task::spawn_blocking(move || drop(victim))
        .await
        .unwrap();
    let killed = Instant::now();
    let down = tokio::time::timeout(
        PATIENCE,
        next_event(&mut events, &victim_id, |k| *k == PeerEventKind::PeerDown),
    )
    .await;
    let took = killed.elapsed();
    stop.store(true, Ordering::Relaxed);
    let sent: u64 = floods.into_iter().map(|f| f.join().unwrap()).sum();
    assert!(
        down.is_ok(),
        "not detected under a flood of {sent} datagrams"
    );
    assert!(
        took <= FAST_BOUND + period + SLACK,
        "detected after {took:?} under a flood of {sent} datagrams; bound {FAST_BOUND:?} + one period"
    );
    assert!(sent > 10_000, "the flood was a trickle: {sent} datagrams");
    let stats = monitor.datagram_stats();
    assert!(stats.malformed > 0 && stats.forged_tokens > 0, "{stats:?}");
    monitor.stop().await.unwrap();
}

const FLOODERS: usize = 2;

/// Sends datagrams to `target` until `stop`; returns how many.
fn flood(target: SocketAddr, stop: &AtomicBool) -> u64 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(target).unwrap();
    let mut ping = Vec::new();
    Datagram {
        kind: Kind::Ping,
        token: [9; 32],
        epoch: 1,
        identity: "flood",
    }
    .seal(Datagram::pong_len(36, false), None, &mut ping);
    let mut pong = Vec::new();
    Datagram {
        kind: Kind::Pong,
        token: [7; 32],
        epoch: u64::MAX,
        identity: "flood",
    }
    .seal(0, None, &mut pong);
    let garbage = [0xA5u8; 300];
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for d in [&ping[..], &ping[..], &ping[..], &pong[..], &garbage[..]] {
            if socket.send(d).is_ok() {
                sent += 1;
            }
        }
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_shorter_than_its_pong_gets_no_answer() {
    let node = memory_node().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(node.local_addr().unwrap()).await.unwrap();
    let mut short = Vec::new();
    Datagram {
        kind: Kind::Ping,
        token: [1; 32],
        epoch: 1,
        identity: "",
    }
    .seal(0, None, &mut short);
    socket.send(&short).await.unwrap();
    let mut buf = [0u8; 1024];
    let got = tokio::time::timeout(Duration::from_millis(300), socket.recv(&mut buf)).await;
    assert!(got.is_err(), "a {}-byte ping was answered", short.len());
    assert_eq!(node.datagram_stats().too_short, 1);
    assert_eq!(node.heartbeats_answered(), 0);
    node.stop().await.unwrap();
}

/// Registers each node with the other.
async fn pair(a: &HeartbeatServer, b: &HeartbeatServer) {
    a.register_peer(fast(b)).await.unwrap();
    b.register_peer(fast(a)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_with_the_cluster_key_are_heard_and_the_others_are_named() {
    let k = || Some(ring(&[key(1)]));
    let a = keyed_node(k()).await;
    let b = keyed_node(k()).await;
    let keyless = keyed_node(None).await;
    let stranger = keyed_node(Some(ring(&[key(2)]))).await;
    pair(&a, &b).await;
    pair(&a, &keyless).await;
    pair(&a, &stranger).await;

    wait_state(&a, &b.identity(), PeerState::Alive).await;
    wait_state(&b, &a.identity(), PeerState::Alive).await;
    for outsider in [&keyless, &stranger] {
        let s = wait_state(&a, &outsider.identity(), PeerState::Unreachable).await;
        assert_eq!(s.heartbeats_acked, 0, "{s:?}");
    }
    // The reason: their datagrams fail authentication, on both sides.
    assert!(
        a.datagram_stats().auth_failed > 0,
        "{:?}",
        a.datagram_stats()
    );
    assert!(keyless.datagram_stats().auth_failed > 0);
    assert!(stranger.datagram_stats().auth_failed > 0);
    assert_eq!(
        wait_state(&stranger, &a.identity(), PeerState::Unreachable)
            .await
            .heartbeats_acked,
        0
    );
    // An unsigned ping, however well formed, gets no answer from a keyed
    // node, and is counted.
    let failed = a.datagram_stats().auth_failed;
    let raw = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    raw.connect(a.local_addr().unwrap()).await.unwrap();
    let mut ping = Vec::new();
    Datagram {
        kind: Kind::Ping,
        token: [3; 32],
        epoch: 1,
        identity: "outsider",
    }
    .seal(Datagram::pong_len(36, true), None, &mut ping);
    raw.send(&ping).await.unwrap();
    let mut buf = [0u8; 1024];
    let got = tokio::time::timeout(Duration::from_millis(300), raw.recv(&mut buf)).await;
    assert!(got.is_err(), "a keyed node answered an unsigned ping");
    assert!(a.datagram_stats().auth_failed > failed);
    // A keyless node still monitors a keyed one, over gRPC, which the key
    // does not cover (docs/PROTOCOL.md).
    wait_state(&keyless, &a.identity(), PeerState::Alive).await;
    for n in [a, b, keyless, stranger] {
        n.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_without_a_false_disconnect() {
    let old = key(1);
    let new = key(2);
    let a = keyed_node(Some(ring(&[old]))).await;
    let b = keyed_node(Some(ring(&[old]))).await;
    let mut a_events = a.events();
    let mut b_events = b.events();
    pair(&a, &b).await;
    wait_state(&a, &b.identity(), PeerState::Alive).await;
    wait_state(&b, &a.identity(), PeerState::Alive).await;

    // The memberlist order: accept the new key everywhere, then sign with
    // it everywhere, then drop the old one; each step one node at a time,
    // with several detection bounds in between.
    let steps = [vec![old, new], vec![new, old], vec![new]];
    for step in &steps {
        for node in [&a, &b] {
            node.set_keyring(Some(ring(step))).await.unwrap();
            tokio::time::sleep(FAST_BOUND * 3).await;
        }
    }
    let acked = status(&a, &b.identity()).await.unwrap().heartbeats_acked;
    tokio::time::sleep(FAST_BOUND * 2).await;
    let later = status(&a, &b.identity()).await.unwrap();
    assert_eq!(later.state, PeerState::Alive);
    assert!(
        later.heartbeats_acked > acked,
        "still heartbeating: {later:?}"
    );
    assert_eq!(a.datagram_stats().auth_failed, 0);
    assert_eq!(b.datagram_stats().auth_failed, 0);
    for (node, events) in [(&a, &mut a_events), (&b, &mut b_events)] {
        let downs = drain(events)
            .into_iter()
            .filter(|e| e.kind == PeerEventKind::PeerDown)
            .count();
        assert_eq!(downs, 0, "false disconnects on {}", node.identity());
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_keys_out_of_order_is_seen_as_a_disconnect() {
    // The control of the rotation test: the same two nodes, one of which
    // signs with a key the other does not accept yet.
    let a = keyed_node(Some(ring(&[key(1)]))).await;
    let b = keyed_node(Some(ring(&[key(1)]))).await;
    pair(&a, &b).await;
    wait_state(&a, &b.identity(), PeerState::Alive).await;
    a.set_keyring(Some(ring(&[key(2)]))).await.unwrap();
    wait_state(&a, &b.identity(), PeerState::Unreachable).await;
    wait_state(&b, &a.identity(), PeerState::Unreachable).await;
    assert!(b.datagram_stats().auth_failed > 0);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

fn drain(events: &mut heartbeater::EventStream) -> Vec<heartbeater::PeerEvent> {
    use futures_util::FutureExt;
    use tokio_stream::StreamExt;
    let mut out = Vec::new();
    while let Some(Some(e)) = events.next().now_or_never() {
        out.push(e);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_key_a_heartbeat_held_by_a_name_lookup_is_no_miss() {
    let keys = ring(&[key(1)]);
    let monitor = keyed_node(Some(keys.clone())).await;
    let peer = keyed_node(Some(keys)).await;
    let mut events = monitor.events();
    // By name: the first heartbeat is due before the name is looked up, and
    // with a key there is no gRPC to carry it meanwhile.
    let request = RegisterPeerRequest {
        peer_host: "localhost".into(),
        max_missed: Some(1),
        ..registration(&peer, 100)
    };
    monitor.register_peer(request).await.unwrap();
    let first = next_event(&mut events, &peer.identity(), |k| {
        matches!(k, PeerEventKind::PeerUp | PeerEventKind::PeerDown)
    })
    .await;
    assert_eq!(
        first.kind,
        PeerEventKind::PeerUp,
        "the peer was convicted for the node's own name lookup"
    );
    peer.stop().await.unwrap();
    monitor.stop().await.unwrap();
}
