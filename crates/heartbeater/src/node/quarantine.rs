//! Stored registrations the node cannot monitor.
//!
//! One record that does not decode (written by a newer release, or damaged
//! on disk) or that decodes to an invalid registration must not keep the
//! node from starting with every other peer. Such a record is left on disk
//! untouched, reported here and in `ListPeers`, and leaves the quarantine
//! when it is deregistered or registered again.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// A stored registration that is not monitored because it cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedPeer {
    /// The peer id; `0x` and the stored key in hex when the key is not a
    /// valid peer id (then it cannot be deregistered through the API).
    pub peer_id: String,
    /// What is wrong with the record.
    pub reason: String,
}

/// The quarantined records, by the id they are named with.
#[derive(Debug, Default)]
pub(crate) struct Quarantine {
    peers: Mutex<BTreeMap<String, String>>,
}

impl Quarantine {
    pub(crate) fn new(peers: impl IntoIterator<Item = QuarantinedPeer>) -> Self {
        Self {
            peers: Mutex::new(peers.into_iter().map(|p| (p.peer_id, p.reason)).collect()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn contains(&self, peer_id: &str) -> bool {
        self.lock().contains_key(peer_id)
    }

    /// Called once the store no longer holds the quarantined record: it was
    /// deleted or overwritten by a new registration.
    pub(crate) fn release(&self, peer_id: &str) {
        let mut peers = self.lock();
        if peers.remove(peer_id).is_some() {
            tracing::info!(peer = %peer_id, "quarantined stored peer replaced or removed");
        }
    }

    /// Every quarantined record, ordered by id.
    pub(crate) fn list(&self) -> Vec<QuarantinedPeer> {
        self.lock()
            .iter()
            .map(|(peer_id, reason)| QuarantinedPeer {
                peer_id: peer_id.clone(),
                reason: reason.clone(),
            })
            .collect()
    }
}
