//! "Acknowledged means durable", checked where a test can see it: RocksDB
//! counts the syncs of its write-ahead log, and every answer to a change of
//! the registry must come after one. A graceful stop or `kill -9` leaves
//! the page cache intact, so restarts alone cannot tell a synced write from
//! an unsynced one; this can.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures_util::future::join_all;
use heartbeater::store::{LoadedPeers, NodeMeta, PeerRecord};
use heartbeater::{
    DeregisterPeerRequest, HeartbeatServer, RegisterPeerRequest, RegistryOp, RegistryStore,
    RocksDbStore, StoreError,
};

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

/// The store under a node, recording which peers each synced write held:
/// an id is in `durable` once a write that held it has returned, and RocksDB
/// returns a synced write only after its WAL sync.
struct Recording {
    inner: Arc<RocksDbStore>,
    durable: Mutex<HashSet<String>>,
    groups: Mutex<Vec<usize>>,
}

impl Recording {
    fn synced(&self, ids: impl IntoIterator<Item = String>) {
        let mut durable = self.durable.lock().unwrap();
        let before = durable.len();
        durable.extend(ids);
        let added = durable.len() - before;
        self.groups.lock().unwrap().push(added);
    }
}

impl RegistryStore for Recording {
    fn load_meta(&self) -> Result<Option<NodeMeta>, StoreError> {
        self.inner.load_meta()
    }
    fn save_meta(&self, meta: &NodeMeta) -> Result<(), StoreError> {
        self.inner.save_meta(meta)
    }
    fn put_peer(&self, record: &PeerRecord) -> Result<(), StoreError> {
        self.inner.put_peer(record)?;
        self.synced([record.peer_id.clone()]);
        Ok(())
    }
    fn delete_peer(&self, peer_id: &str) -> Result<bool, StoreError> {
        let existed = self.inner.delete_peer(peer_id)?;
        self.synced([peer_id.to_owned()]);
        Ok(existed)
    }
    fn apply(&self, ops: &[RegistryOp]) -> Result<(), StoreError> {
        self.inner.apply(ops)?;
        self.synced(ops.iter().map(|op| match op {
            RegistryOp::Put(record) => record.peer_id.clone(),
            RegistryOp::Delete(id) => id.clone(),
        }));
        Ok(())
    }
    fn get_peer(&self, peer_id: &str) -> Result<Option<PeerRecord>, StoreError> {
        self.inner.get_peer(peer_id)
    }
    fn load_peers(&self) -> Result<LoadedPeers, StoreError> {
        self.inner.load_peers()
    }
    fn record_epoch(&self, peer_id: &str, epoch: u64) -> Result<(), StoreError> {
        self.inner.record_epoch(peer_id, epoch)
    }
}

/// Concurrent registrations share syncs (group commit), but none is
/// answered before the synced write of its own group: at each answer, the
/// write that held that very registration has returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_shares_syncs_and_each_answer_comes_after_its_own_groups_sync() {
    let dir = tempfile::tempdir().unwrap();
    let rocks = Arc::new(RocksDbStore::open(dir.path()).unwrap());
    let store = Arc::new(Recording {
        inner: rocks.clone(),
        durable: Mutex::default(),
        groups: Mutex::default(),
    });
    let server = HeartbeatServer::builder()
        .server_port(0)
        .store(store.clone())
        .build()
        .expect("build");
    server.start().await.expect("start");
    let node = Arc::new(server);
    let before = rocks.wal_syncs();
    let answers = join_all((0..256).map(|i| {
        let (node, store) = (node.clone(), store.clone());
        async move {
            node.register_peer(peer(i)).await.unwrap();
            // Read at the answer, before anything else can happen.
            let durable = store.durable.lock().unwrap().contains(&format!("peer-{i}"));
            (i, durable)
        }
    }))
    .await;
    let early: Vec<usize> = answers.iter().filter(|a| !a.1).map(|a| a.0).collect();
    assert!(
        early.is_empty(),
        "answered before the write that held them: {early:?}"
    );
    let groups = store.groups.lock().unwrap().clone();
    assert!(
        groups.len() < 256 && rocks.wal_syncs() - before < 256,
        "no group shared a sync: {groups:?}"
    );
    assert_eq!(node.peers().await.len(), 256);
}
