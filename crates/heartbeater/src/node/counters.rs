//! Counters of the datagram path and of the driver's local pauses, shared by
//! the driver (which writes them) and whoever reports them (which reads
//! them): relaxed atomics, no lock.

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
    pub(crate) pauses: AtomicU64,
    pub(crate) pause_longest_micros: AtomicU64,
    pub(crate) pause_total_micros: AtomicU64,
    pub(crate) pause_voided: AtomicU64,
    /// Heartbeats voided because this node could not carry them (its send
    /// buffer full, its gRPC calls at their limit, a peer's name still being
    /// looked up on a node with a cluster key).
    pub(crate) overload_voided: AtomicU64,
    /// Datagrams the socket dropped, its buffer full, as last seen.
    pub(crate) receive_drops: AtomicU64,
    /// The table's local health score, as of the driver's latest wake-up.
    pub(crate) awareness: AtomicU64,
    /// Indirect probe rounds opened (peers about to be convicted).
    pub(crate) indirect_rounds: AtomicU64,
    /// Requests sent to helpers.
    pub(crate) indirect_requests: AtomicU64,
    /// Genuine answers of helpers received.
    pub(crate) indirect_answers: AtomicU64,
    /// Rounds an answer kept alive: convictions prevented.
    pub(crate) indirect_kept: AtomicU64,
    /// Rounds that could ask no helper and convicted at once.
    pub(crate) indirect_unavailable: AtomicU64,
    /// Requests of other monitors this node served (pinged their suspect).
    pub(crate) relay_served: AtomicU64,
    /// Requests refused: over a monitor's rate, or no room.
    pub(crate) relay_refused: AtomicU64,
    /// Answers sent back to monitors.
    pub(crate) relay_answered: AtomicU64,
    /// Heartbeats by path, RTTs, transitions, registry writes.
    pub(crate) work: crate::node::metrics::Metrics,
}

/// What a node's indirect probes did since it was built
/// ([`crate::HeartbeatServer::indirect_stats`]): as a monitor, the rounds
/// it opened before convicting a peer and what its helpers answered; as a
/// helper, the requests of other monitors it served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndirectStats {
    /// Rounds opened: a peer's misses would have convicted it.
    pub rounds: u64,
    /// Requests sent to helpers.
    pub requests_sent: u64,
    /// Genuine answers received from helpers.
    pub answers: u64,
    /// Rounds an answer kept alive: convictions prevented.
    pub convictions_prevented: u64,
    /// Rounds with no helper to ask (no other peer ALIVE over datagrams, or
    /// no address for the suspect), which convicted at once.
    pub without_helpers: u64,
    /// Requests of other monitors served.
    pub served: u64,
    /// Requests of other monitors refused (over their rate, or no room).
    pub refused: u64,
    /// Answers sent back to other monitors.
    pub answered: u64,
}

/// The local pauses a node's own scheduler went through
/// ([`crate::HeartbeatServer::pause_stats`]): times it did not run for longer
/// than the pause threshold (stopped, starved, frozen), so that no peer was
/// judged on that gap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PauseStats {
    /// Pauses seen since the node was built.
    pub pauses: u64,
    /// The longest one.
    pub longest: std::time::Duration,
    /// All of them together.
    pub total: std::time::Duration,
    /// Heartbeats in flight across a pause, voided (neither answered nor
    /// missed).
    pub voided_heartbeats: u64,
    /// Heartbeats this node could not carry (its send buffer full, its gRPC
    /// calls at their limit, a peer's name still being looked up on a node
    /// with a cluster key), or whose replies its own socket may have
    /// dropped: voided too, since that silence says nothing about its peers.
    pub voided_overloaded: u64,
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
    /// Datagrams the kernel dropped because this node's socket buffer was
    /// full (it fell behind reading): counted where the system reports it
    /// (Linux). Heartbeats whose replies may be among them are voided.
    pub dropped_on_receive: u64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_pause(&self, length: std::time::Duration, voided: usize) {
        let micros = u64::try_from(length.as_micros()).unwrap_or(u64::MAX);
        self.pauses.fetch_add(1, Ordering::Relaxed);
        self.pause_longest_micros
            .fetch_max(micros, Ordering::Relaxed);
        self.pause_total_micros.fetch_add(micros, Ordering::Relaxed);
        self.pause_voided
            .fetch_add(u64::try_from(voided).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(crate) fn pause_snapshot(&self) -> PauseStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PauseStats {
            pauses: get(&self.pauses),
            longest: std::time::Duration::from_micros(get(&self.pause_longest_micros)),
            total: std::time::Duration::from_micros(get(&self.pause_total_micros)),
            voided_heartbeats: get(&self.pause_voided),
            voided_overloaded: get(&self.overload_voided),
        }
    }

    pub(crate) fn indirect_snapshot(&self) -> IndirectStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        IndirectStats {
            rounds: get(&self.indirect_rounds),
            requests_sent: get(&self.indirect_requests),
            answers: get(&self.indirect_answers),
            convictions_prevented: get(&self.indirect_kept),
            without_helpers: get(&self.indirect_unavailable),
            served: get(&self.relay_served),
            refused: get(&self.relay_refused),
            answered: get(&self.relay_answered),
        }
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
            dropped_on_receive: get(&self.receive_drops),
        }
    }
}
