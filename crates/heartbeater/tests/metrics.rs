//! The node's work counters (`HeartbeatServer::metrics`), from real
//! heartbeats between two nodes: what `/metrics` exports.

mod common;

use common::*;
use heartbeater::PeerState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_rtts_transitions_and_writes_are_counted() {
    let monitor = memory_node().await;
    let peer = memory_node().await;
    monitor
        .register_peer(registration(&peer, 50))
        .await
        .unwrap();
    let id = peer.identity();
    wait_state(&monitor, &id, PeerState::Alive).await;
    let m = eventually("a few acknowledged heartbeats", || {
        let m = monitor.metrics();
        (m.datagram.acked >= 3).then_some(m)
    })
    .await;
    assert!(m.datagram.sent >= m.datagram.acked);
    assert_eq!(m.rtt_seconds.count, m.datagram.acked + m.grpc.acked);
    assert!(m.rtt_seconds.sum > 0.0 && m.rtt_seconds.sum < 1.0);
    assert_eq!(m.transitions.registered, 1);
    assert_eq!(m.transitions.peer_up, 1);
    assert_eq!(m.transitions.peer_down, 0);
    assert_eq!(m.registry_group_size.count, 1, "one synced registration");
    assert_eq!(m.registry_write_seconds.count, 1);

    peer.stop().await.unwrap();
    wait_state(&monitor, &id, PeerState::Unreachable).await;
    // The event (and its count) follows the state change within the same
    // turn of the driver, after the status that `wait_state` read.
    let m = eventually("the PeerDown counted", || {
        let m = monitor.metrics();
        (m.transitions.peer_down > 0).then_some(m)
    })
    .await;
    assert!(m.datagram.timed_out >= 3, "{:?}", m.datagram);
    assert_eq!(m.transitions.peer_down, 1);
}
