//! "Acknowledged means durable", checked where a test can see it: RocksDB
//! counts the syncs of its write-ahead log, and every answer to a change of
//! the registry must come after one. A graceful stop or `kill -9` leaves
//! the page cache intact, so restarts alone cannot tell a synced write from
//! an unsynced one; this can.

use std::sync::Arc;

use futures_util::future::join_all;
use heartbeater::{DeregisterPeerRequest, HeartbeatServer, RegisterPeerRequest, RocksDbStore};

mod common;

fn peer(i: usize) -> RegisterPeerRequest {
    common::idle_peer(&format!("peer-{i}"))
}

async fn node_on(store: Arc<RocksDbStore>) -> HeartbeatServer {
    let server = HeartbeatServer::builder()
        .server_port(0)
        .store(store)
        .build()
        .expect("build");
    server.start().await.expect("start");
    server
}

#[tokio::test]
async fn every_acknowledged_change_comes_after_a_wal_sync() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RocksDbStore::open(dir.path()).unwrap());
    let node = node_on(store.clone()).await;
    for i in 0..20 {
        let before = store.wal_syncs();
        node.register_peer(peer(i)).await.unwrap();
        assert!(
            store.wal_syncs() > before,
            "registration {i} was acknowledged before any WAL sync"
        );
    }
    for i in 0..20 {
        let before = store.wal_syncs();
        node.deregister_peer(DeregisterPeerRequest {
            peer_id: format!("peer-{i}"),
        })
        .await
        .unwrap();
        assert!(
            store.wal_syncs() > before,
            "deregistration {i} was acknowledged before any WAL sync"
        );
    }
    node.stop().await.unwrap();
}

/// Concurrent registrations share syncs (group commit), but none is
/// answered before the sync of its group: at each answer the count has
/// moved, and fewer syncs than registrations were needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_shares_syncs_and_no_answer_comes_before_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RocksDbStore::open(dir.path()).unwrap());
    let node = Arc::new(node_on(store.clone()).await);
    let before = store.wal_syncs();
    let answers = join_all((0..256).map(|i| {
        let (node, store) = (node.clone(), store.clone());
        async move {
            node.register_peer(peer(i)).await.unwrap();
            store.wal_syncs()
        }
    }))
    .await;
    assert!(
        answers.iter().all(|&at_answer| at_answer > before),
        "an answer came before any sync: {answers:?}"
    );
    let syncs = store.wal_syncs() - before;
    assert!(
        syncs < 256,
        "{syncs} syncs for 256 registrations: no group shared one"
    );
    assert_eq!(node.peers().await.len(), 256);
}
