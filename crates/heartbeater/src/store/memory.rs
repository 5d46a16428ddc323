//! The in-memory registry store: everything is lost when the last handle is
//! dropped. Clones share one registry, which lets tests "reopen" it.

use super::codec;
use super::registry::{LoadedPeers, NodeMeta, PeerRecord, RegistryOp, RegistryStore, StoreError};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// One peer as kept here: the record in the form the RocksDB store writes
/// (a few dozen bytes, in one allocation), and the remembered epoch. A node
/// monitoring 10,000 peers pays for this on every one of them: the record as
/// a struct of its own took about 100 bytes plus a second allocation for
/// the host.
#[derive(Debug)]
struct Stored {
    encoded: Box<[u8]>,
    last_epoch: Option<u64>,
}

impl Stored {
    fn record(&self) -> Option<PeerRecord> {
        // Encoded here from a valid record: decoding it gives it back.
        let mut record = codec::decode_peer(&self.encoded).ok()?;
        record.last_epoch = self.last_epoch;
        Some(record)
    }
}

#[derive(Debug, Default)]
struct Inner {
    meta: Option<NodeMeta>,
    peers: BTreeMap<Box<str>, Stored>,
}

impl Inner {
    /// A new registration forgets the epoch of an earlier one; an update of
    /// a registered peer keeps it.
    fn put(&mut self, record: &PeerRecord) {
        let last_epoch = self
            .peers
            .get(record.peer_id.as_str())
            .and_then(|p| p.last_epoch);
        let stored = Stored {
            encoded: codec::encode_peer(record).into_boxed_slice(),
            last_epoch,
        };
        self.peers.insert(record.peer_id.as_str().into(), stored);
    }

    fn delete(&mut self, peer_id: &str) -> bool {
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
        // A panic while holding this lock cannot leave the map half-updated
        // (a write is a few inserts and removes that each leave it valid), so poison is ignored.
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
        Ok(self.lock().peers.get(peer_id).and_then(Stored::record))
    }

    fn load_peers(&self) -> Result<LoadedPeers, StoreError> {
        let inner = self.lock();
        Ok(LoadedPeers {
            records: inner.peers.values().filter_map(Stored::record).collect(),
            unreadable: Vec::new(),
        })
    }

    fn peer_count_hint(&self) -> usize {
        self.lock().peers.len()
    }

    fn record_epoch(&self, peer_id: &str, epoch: u64) -> Result<(), StoreError> {
        if let Some(p) = self.lock().peers.get_mut(peer_id) {
            p.last_epoch = Some(epoch);
        }
        Ok(())
    }
}
