//! Indirect probes: a monitor whose own path to a peer fails asks another
//! node, and a bad link is not a verdict; a dead peer still is, within
//! `max_missed x frequency + 2 x timeout`. Only what the cluster key
//! authenticates is heard.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use heartbeater::indirect::{ProbeAnswer, ProbeRequest};
use heartbeater::{HeartbeatServer, Keyring, PeerEventKind, PeerState, RegisterPeerRequest};
use tokio::net::UdpSocket;

/// Scheduling slack on a loaded 2-core CI machine (see detection.rs).
const SLACK: Duration = Duration::from_millis(500);

fn ring(byte: u8) -> Keyring {
    Keyring::new(&[[byte; 32]]).expect("valid key")
}

async fn keyed(helpers: usize) -> HeartbeatServer {
    let server = HeartbeatServer::builder()
        .server_port(0)
        .in_memory()
        .cluster_keys(ring(7))
        .indirect_probes(helpers)
        .build()
        .expect("build");
    server.start().await.expect("start");
    server
}

/// 50 ms, timeout 50 ms, 3 misses.
fn fast(peer_id: String, at: SocketAddr) -> RegisterPeerRequest {
    RegisterPeerRequest {
        peer_id,
        peer_host: at.ip().to_string(),
        peer_port: u32::from(at.port()),
        heartbeat_freq_millis: 50,
        timeout_millis: Some(50),
        max_missed: Some(3),
        ..Default::default()
    }
}

/// `max_missed x frequency + 2 x timeout` of [`fast`].
const BOUND: Duration = Duration::from_millis(3 * 50 + 2 * 50);

/// A UDP hop in front of `target` that drops every datagram from `cut`
/// (both ways: nothing reaches `cut` either, since its own datagrams never
/// get an upstream) and carries everyone else's: the one bad link.
async fn one_bad_link(target: SocketAddr, cut: SocketAddr) -> SocketAddr {
    let public = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = public.local_addr().unwrap();
    tokio::spawn(async move {
        let mut upstreams = std::collections::HashMap::<SocketAddr, Arc<UdpSocket>>::new();
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = public.recv_from(&mut buf).await {
            if from == cut {
                continue;
            }
            let up = match upstreams.get(&from) {
                Some(u) => u.clone(),
                None => {
                    let u = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    upstreams.insert(from, u.clone());
                    let (back, public) = (u.clone(), public.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 2048];
                        while let Ok((n, _)) = back.recv_from(&mut buf).await {
                            let _ = public.send_to(&buf[..n], from).await;
                        }
                    });
                    u
                }
            };
            let _ = up.send_to(&buf[..n], target).await;
        }
    });
    addr
}

/// A monitor, a helper and a peer, all keyed; the monitor reaches the peer
/// only through [`one_bad_link`], which drops the monitor's datagrams and
/// carries the helper's.
async fn cut_off(monitor_helpers: usize) -> (HeartbeatServer, HeartbeatServer, HeartbeatServer) {
    let monitor = keyed(monitor_helpers).await;
    let helper = keyed(3).await;
    let peer = keyed(3).await;
    let hop = one_bad_link(peer.local_addr().unwrap(), monitor.local_addr().unwrap()).await;
    monitor
        .register_peer(fast(helper.identity(), helper.local_addr().unwrap()))
        .await
        .unwrap();
    wait_state(&monitor, &helper.identity(), PeerState::Alive).await;
    monitor
        .register_peer(fast(peer.identity(), hop))
        .await
        .unwrap();
    (monitor, helper, peer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_only_the_helper_reaches_stays_alive_reached_indirectly() {
    let (monitor, helper, peer) = cut_off(3).await;
    let mut events = monitor.events();
    let reached = next_event(&mut events, &peer.identity(), |k| {
        matches!(k, PeerEventKind::ReachedIndirectly { .. })
    })
    .await;
    assert_eq!(
        reached.kind,
        PeerEventKind::ReachedIndirectly {
            via: Some(helper.identity())
        }
    );
    assert_eq!(reached.state, PeerState::Alive);
    // It stays so: a second of rounds, none of them a verdict.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = status(&monitor, &peer.identity()).await.unwrap();
    assert_eq!(s.state, PeerState::Alive, "{s:?}");
    assert!(s.reached_indirectly, "{s:?}");
    assert_eq!(s.reached_via, [helper.identity()]);
    assert_eq!(
        s.heartbeats_acked, 0,
        "the monitor's own path never answered"
    );
    assert_eq!(monitor.metrics().transitions.peer_down, 0);
    let stats = monitor.indirect_stats();
    assert!(stats.convictions_prevented >= 2, "{stats:?}");
    assert_eq!(stats.without_helpers, 0, "{stats:?}");
    let served = helper.indirect_stats();
    assert!(served.served >= 2 && served.answered >= 2, "{served:?}");

    // The peer dies: the helper's pings go unanswered, and the round's
    // timeout convicts within the bound.
    let stopped = Instant::now();
    peer.stop().await.unwrap();
    let down = next_event(&mut events, &peer.identity(), |k| {
        *k == PeerEventKind::PeerDown
    })
    .await;
    let took = stopped.elapsed();
    assert_eq!(down.state, PeerState::Unreachable);
    assert!(
        took <= BOUND + SLACK,
        "convicted after {took:?}, bound {BOUND:?} (+{SLACK:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_indirect_probes_off_the_same_bad_link_convicts() {
    let (monitor, _helper, peer) = cut_off(0).await;
    wait_state(&monitor, &peer.identity(), PeerState::Unreachable).await;
    assert_eq!(monitor.indirect_stats().rounds, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_cluster_key_there_are_no_rounds_and_requests_are_not_served() {
    let node = HeartbeatServer::builder()
        .server_port(0)
        .in_memory()
        .build()
        .unwrap();
    node.start().await.unwrap();
    assert!(!node.indirect_probes_on());
    // A silent peer is convicted as before, with no round.
    node.register_peer(fast("ghost".into(), "127.0.0.1:9".parse().unwrap()))
        .await
        .unwrap();
    wait_state(&node, "ghost", PeerState::Unreachable).await;
    assert_eq!(node.indirect_stats().rounds, 0);

    // A request signed with some key, to a node that has none, and an
    // unsigned one to a keyed node: neither makes anyone send anything.
    let keyed_node = keyed(3).await;
    assert!(keyed_node.indirect_probes_on());
    let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = Vec::new();
    ProbeRequest {
        nonce: [1; 32],
        timeout: Duration::from_millis(100),
        target,
        expected: "ghost",
    }
    .seal(&ring(9), &mut buf);
    for to in [&node, &keyed_node] {
        attacker
            .send_to(&buf, to.local_addr().unwrap())
            .await
            .unwrap();
    }
    eventually("both requests refused", || {
        (node.datagram_stats().auth_failed >= 1 && keyed_node.datagram_stats().auth_failed >= 1)
            .then_some(())
    })
    .await;
    assert_eq!(node.indirect_stats().served, 0);
    assert_eq!(keyed_node.indirect_stats().served, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_a_member_makes_up_keeps_nothing_alive() {
    // Even with the cluster key, an answer whose nonce the monitor did not
    // seal for a round in flight, or that comes from a node it did not ask,
    // is not believed.
    let monitor = keyed(3).await;
    monitor
        .register_peer(fast("dead".into(), "127.0.0.1:9".parse().unwrap()))
        .await
        .unwrap();
    let member = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = monitor.local_addr().unwrap();
    let flood = tokio::spawn(async move {
        let mut buf = Vec::new();
        for i in 0u32.. {
            let mut nonce = [0u8; 32];
            nonce[..4].copy_from_slice(&i.to_be_bytes());
            ProbeAnswer {
                nonce,
                epoch: 1,
                identity: "dead",
            }
            .seal(usize::MAX, &ring(7), &mut buf);
            let _ = member.send_to(&buf, to).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    wait_state(&monitor, "dead", PeerState::Unreachable).await;
    flood.abort();
    assert!(monitor.datagram_stats().forged_tokens > 0);
    assert_eq!(monitor.indirect_stats().convictions_prevented, 0);
}
