//! Counters of the datagram path, shared by the driver (which writes them)
//! and whoever reports them (which reads them): relaxed atomics, no lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// What the datagram path has seen since the node was built.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) answered: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) auth_failed: AtomicU64,
    pub(crate) not_answered_too_short: AtomicU64,
    pub(crate) forged_tokens: AtomicU64,
    pub(crate) unmatched_pongs: AtomicU64,
}

/// A snapshot of a node's datagram counters
/// ([`crate::HeartbeatServer::datagram_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatagramStats {
    /// Heartbeats this node answered, over either path.
    pub answered: u64,
    /// Datagrams dropped because they are not heartbeat datagrams (or of
    /// another version).
    pub malformed: u64,
    /// Datagrams dropped because their authentication failed: unsigned on a
    /// node with a cluster key, signed with a key not in the keyring, a tag
    /// that does not verify, or signed while this node has no key. A peer
    /// with another cluster key shows up here, and as unreachable.
    pub auth_failed: u64,
    /// Pings not answered because the pong would have been longer.
    pub too_short: u64,
    /// Pongs whose token this node did not make: forged, or from an earlier
    /// run of this node.
    pub forged_tokens: u64,
    /// Pongs with a genuine token that named no heartbeat in flight on the
    /// datagram path: duplicates, and replies to heartbeats already settled.
    pub unmatched_pongs: u64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> DatagramStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DatagramStats {
            answered: get(&self.answered),
            malformed: get(&self.malformed),
            auth_failed: get(&self.auth_failed),
            too_short: get(&self.not_answered_too_short),
            forged_tokens: get(&self.forged_tokens),
            unmatched_pongs: get(&self.unmatched_pongs),
        }
    }
}
