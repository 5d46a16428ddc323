//! The in-memory registry store: everything is lost when the last handle is
//! dropped. Clones share one registry, which lets tests "reopen" it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{NodeMeta, PeerRecord, RegistryOp, RegistryStore, StoreError};

#[derive(Debug, Default)]
struct Inner {
    meta: Option<NodeMeta>,
    peers: BTreeMap<String, PeerRecord>,
    epochs: HashMap<String, u64>,
}

impl Inner {
    fn put(&mut self, record: &PeerRecord) {
        let mut record = record.clone();
        record.last_epoch = None;
        let id = record.peer_id.clone();
        if self.peers.insert(id.clone(), record).is_none() {
            self.epochs.remove(&id);
        }
    }

    fn delete(&mut self, peer_id: &str) -> bool {
        self.epochs.remove(peer_id);
        self.peers.remove(peer_id).is_some()
    }
}

/// A registry kept in memory, for tests and nodes that need no persistence.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the maps half-updated
        // (a write is a few inserts and removes that each leave the maps valid), so poison is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RegistryStore for MemoryStore {
    fn load_meta(&self) -> Result<Option<NodeMeta>, StoreError> {
        Ok(self.lock().meta.clone())
    }

    fn save_meta(&self, meta: &NodeMeta) -> Result<(), StoreError> {
        self.lock().meta = Some(meta.clone());
        Ok(())
    }

    fn put_peer(&self, record: &PeerRecord) -> Result<(), StoreError> {
        self.lock().put(record);
        Ok(())
    }

    fn delete_peer(&self, peer_id: &str) -> Result<bool, StoreError> {
        Ok(self.lock().delete(peer_id))
    }

    fn apply(&self, ops: &[RegistryOp]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for op in ops {
            match op {
                RegistryOp::Put(record) => inner.put(record),
                RegistryOp::Delete(peer_id) => {
                    inner.delete(peer_id);
                }
            }
        }
        Ok(())
    }

    fn get_peer(&self, peer_id: &str) -> Result<Option<PeerRecord>, StoreError> {
        let inner = self.lock();
        Ok(inner.peers.get(peer_id).map(|p| with_epoch(&inner, p)))
    }

    fn load_peers(&self) -> Result<Vec<PeerRecord>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .peers
            .values()
            .map(|p| with_epoch(&inner, p))
            .collect())
    }

    fn record_epoch(&self, peer_id: &str, epoch: u64) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.peers.contains_key(peer_id) {
            inner.epochs.insert(peer_id.to_owned(), epoch);
        }
        Ok(())
    }
}

fn with_epoch(inner: &Inner, p: &PeerRecord) -> PeerRecord {
    let mut p = p.clone();
    p.last_epoch = inner.epochs.get(&p.peer_id).copied();
    p
}
