//! A node restarted on its data directory keeps its identity, takes a higher
//! epoch and heartbeats its stored peers again; its peers see the restart.

mod common;

use common::*;
use heartbeater::{HeartbeatServer, PeerEventKind, PeerState, ServerError};

fn on_dir(dir: &std::path::Path) -> HeartbeatServer {
    HeartbeatServer::builder()
        .server_port(0)
        .data_dir(dir)
        .build()
        .expect("build on data dir")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_identity_raises_epoch_and_resumes_its_peers() {
    let dir = tempfile::tempdir().unwrap();
    let peer = memory_node().await;

    let first = on_dir(dir.path());
    first.start().await.unwrap();
    let (identity, epoch) = (first.identity(), first.epoch());
    assert_eq!(epoch, 1, "a new data directory starts at epoch 1");
    first.register_peer(registration(&peer, 20)).await.unwrap();
    wait_state(&first, &peer.identity(), PeerState::Alive).await;
    first.stop().await.unwrap();

    let second = on_dir(dir.path());
    assert_eq!(second.identity(), identity, "identity survives a restart");
    assert_eq!(second.epoch(), epoch + 1, "epoch grows at every start");
    let restored = status(&second, &peer.identity())
        .await
        .expect("registration survives");
    assert_eq!(restored.state, PeerState::Unknown);
    assert_eq!(restored.port, peer.local_addr().unwrap().port());
    assert_eq!(restored.detector.heartbeat_freq.as_millis(), 20);
    second.start().await.unwrap();
    let alive = wait_state(&second, &peer.identity(), PeerState::Alive).await;
    assert!(
        alive.heartbeats_acked >= 1,
        "stored peers are heartbeated again"
    );
    second.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_sees_its_peer_restart_with_a_higher_epoch() {
    let peer_dir = tempfile::tempdir().unwrap();
    let monitor = memory_node().await;
    let peer = on_dir(peer_dir.path());
    let addr = peer.start().await.unwrap();
    let mut events = monitor.events();
    let mut request = registration(&peer, 20);
    request.max_missed = Some(2);
    monitor.register_peer(request).await.unwrap();
    let up = next_event(&mut events, &peer.identity(), |k| {
        *k == PeerEventKind::PeerUp
    })
    .await;
    assert_eq!(up.epoch, Some(1));

    peer.stop().await.unwrap();
    drop(peer);
    next_event(&mut events, &peer_identity(&monitor).await, |k| {
        *k == PeerEventKind::PeerDown
    })
    .await;

    let reborn = node_on(peer_dir.path(), addr.port()).await;
    let restarted = next_event(&mut events, &reborn.identity(), |k| {
        matches!(k, PeerEventKind::Restarted { .. })
    })
    .await;
    assert_eq!(restarted.kind, PeerEventKind::Restarted { previous: 1 });
    assert_eq!(restarted.epoch, Some(2));
    let up = next_event(&mut events, &reborn.identity(), |k| {
        *k == PeerEventKind::PeerUp
    })
    .await;
    assert_eq!(up.state, PeerState::Alive);
    reborn.stop().await.unwrap();
}

async fn peer_identity(monitor: &HeartbeatServer) -> String {
    monitor.peers().await[0].peer_id.clone()
}

#[tokio::test]
async fn an_explicit_epoch_below_the_stored_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = HeartbeatServer::builder()
        .data_dir(dir.path())
        .server_epoch(5)
        .build()
        .unwrap();
    assert_eq!(first.epoch(), 5);
    first.stop().await.unwrap();
    drop(first);
    let err = HeartbeatServer::builder()
        .data_dir(dir.path())
        .server_epoch(4)
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            ServerError::EpochRegressed {
                stored: 5,
                requested: 4
            }
        ),
        "{err}"
    );
    let same = HeartbeatServer::builder()
        .data_dir(dir.path())
        .server_epoch(5)
        .build()
        .unwrap();
    assert_eq!(same.epoch(), 5, "an equal explicit epoch is allowed");
    same.stop().await.unwrap();
    drop(same);
    let next = HeartbeatServer::builder()
        .data_dir(dir.path())
        .build()
        .unwrap();
    assert_eq!(next.epoch(), 6);
}

#[tokio::test]
async fn stop_releases_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = on_dir(dir.path());
    first.start().await.unwrap();
    first.stop().await.unwrap();
    // `first` is still alive here: stop alone must have released the lock.
    let second = on_dir(dir.path());
    assert_eq!(second.identity(), first.identity());
    assert!(matches!(first.start().await, Err(ServerError::Stopped)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_are_each_acknowledged_durable_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let node = std::sync::Arc::new(on_dir(dir.path()));
    node.start().await.unwrap();
    let request = |id: String| heartbeater::RegisterPeerRequest {
        peer_id: id,
        peer_host: "127.0.0.1".into(),
        peer_port: 9,
        heartbeat_freq_millis: 60_000,
        timeout_millis: None,
        max_missed: None,
        ..Default::default()
    };
    // 64 clients at once, each registering, re-registering and (every
    // fourth) deregistering its own peers in sequence; their changes share
    // group writes with everyone else's.
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..64 {
        let node = node.clone();
        clients.spawn(async move {
            for i in 0..8 {
                let id = format!("c{c:02}-{i}");
                let first = node.register_peer(request(id.clone())).await.unwrap();
                assert!(!first.updated, "{id}: a first registration is new");
                let again = node.register_peer(request(id.clone())).await.unwrap();
                assert!(again.updated, "{id}: the second one updates it");
                if i % 4 == 0 {
                    node.deregister_peer(heartbeater::DeregisterPeerRequest {
                        peer_id: id.clone(),
                    })
                    .await
                    .unwrap();
                    let unknown = node
                        .deregister_peer(heartbeater::DeregisterPeerRequest {
                            peer_id: id.clone(),
                        })
                        .await;
                    assert!(
                        matches!(unknown, Err(heartbeater::NodeError::UnknownPeer(_))),
                        "{id}: a second deregistration finds nothing: {unknown:?}"
                    );
                }
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.expect("client task");
    }
    assert_eq!(node.peers().await.len(), 64 * 6, "the live table");
    node.stop().await.unwrap();
    drop(node);

    let reopened = on_dir(dir.path());
    let ids: std::collections::BTreeSet<String> = reopened
        .peers()
        .await
        .into_iter()
        .map(|p| p.peer_id)
        .collect();
    let expected: std::collections::BTreeSet<String> = (0..64)
        .flat_map(|c| {
            (0..8)
                .filter(|i| i % 4 != 0)
                .map(move |i| format!("c{c:02}-{i}"))
        })
        .collect();
    assert_eq!(ids, expected, "every acknowledged change is on disk");
}
