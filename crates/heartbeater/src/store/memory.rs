//! The in-memory registry store: everything is lost when the last handle is
//! dropped. Clones share one registry, which lets tests "reopen" it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::registry::{LoadedPeers, NodeMeta, PeerRecord, RegistryOp, RegistryStore, StoreError};

/// One peer as kept here: the record without its id (the map's key holds
/// it) and with the remembered epoch inline. A node monitoring 10,000 peers
/// pays for this on every one of them, so it is about half the size of a
/// [`PeerRecord`] plus a separate epoch map.
#[derive(Debug)]
struct Stored {
    host: Box<str>,
    heartbeat_freq: Duration,
    timeout: Duration,
    registered_at_micros: i64,
    last_epoch: Option<u64>,
    max_missed: u32,
    rise: u32,
    kind: heartbeater_core::DetectorKind,
    port: u16,
}

impl Stored {
    fn record(&self, peer_id: &str) -> PeerRecord {
        PeerRecord {
            peer_id: peer_id.to_owned(),
            host: self.host.to_string(),
            port: self.port,
            heartbeat_freq: self.heartbeat_freq,
            timeout: self.timeout,
            max_missed: self.max_missed,
            registered_at_micros: self.registered_at_micros,
            last_epoch: self.last_epoch,
            kind: self.kind,
            rise: self.rise,
        }
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
            host: record.host.as_str().into(),
            heartbeat_freq: record.heartbeat_freq,
            timeout: record.timeout,
            registered_at_micros: record.registered_at_micros,
            last_epoch,
            max_missed: record.max_missed,
            rise: record.rise,
            kind: record.kind,
            port: record.port,
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
        Ok(self.lock().peers.get(peer_id).map(|p| p.record(peer_id)))
    }

    fn load_peers(&self) -> Result<LoadedPeers, StoreError> {
        let inner = self.lock();
        Ok(LoadedPeers {
            records: inner.peers.iter().map(|(id, p)| p.record(id)).collect(),
            unreadable: Vec::new(),
        })
    }

    fn record_epoch(&self, peer_id: &str, epoch: u64) -> Result<(), StoreError> {
        if let Some(p) = self.lock().peers.get_mut(peer_id) {
            p.last_epoch = Some(epoch);
        }
        Ok(())
    }
}
