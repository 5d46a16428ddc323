//! What a node counts about its own work, for whoever exports it (the CLI
//! serves it as Prometheus metrics): heartbeats by path, round-trip times,
//! liveness transitions, registry writes. The driver and the committer write
//! relaxed atomics; [`crate::HeartbeatServer::metrics`] copies them out. No
//! lock, no allocation on the hot path, and no dependency on any metrics
//! crate: the library stays usable with whichever exporter a program has.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use heartbeater_core::{EventKind, Path};

/// Upper bounds of the round-trip-time buckets, in seconds: loopback to a
/// slow WAN, and the default timeouts in between.
pub const RTT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Upper bounds of the registry-write latency buckets, in seconds: one
/// synced RocksDB write is about a millisecond on an SSD.
pub const WRITE_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Upper bounds of the registry group-size buckets (changes per synced
/// write).
pub const GROUP_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// A fixed-bucket histogram of non-negative values, kept as integer units
/// (microseconds or counts) so that every update is one atomic add.
#[derive(Debug)]
pub(crate) struct Histogram {
    bounds: &'static [f64],
    /// Recorded integers per unit of the bounds (1e6 for seconds recorded
    /// in microseconds). A divisor, not a factor: `2994 / 1e6` is the
    /// nearest double to 0.002994, where `2994 * 1e-6` is not, and
    /// exporters then print `0.0029939999999999997`.
    units_per: f64,
    /// Per bucket, not cumulative; one more than `bounds` for +Inf.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64], units_per: f64) -> Self {
        Self {
            bounds,
            units_per,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    fn record_units(&self, units: u64) {
        let value = units as f64 / self.units_per;
        let i = self.bounds.partition_point(|&b| b < value);
        // `i` is at most `bounds.len()`, the +Inf bucket.
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(units, Ordering::Relaxed);
    }

    fn record_duration(&self, d: Duration) {
        self.record_units(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0u64;
        let buckets = self
            .bounds
            .iter()
            .zip(self.counts.iter())
            .map(|(&b, c)| {
                cumulative = cumulative.saturating_add(c.load(Ordering::Relaxed));
                (b, cumulative)
            })
            .collect();
        let inf = self.counts.last().map_or(0, |c| c.load(Ordering::Relaxed));
        HistogramSnapshot {
            buckets,
            count: cumulative.saturating_add(inf),
            sum: self.sum.load(Ordering::Relaxed) as f64 / self.units_per,
        }
    }
}

/// A histogram as Prometheus shows one: cumulative counts per upper bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations at or below it)`, bounds increasing; the
    /// +Inf bucket is `count`.
    pub buckets: Vec<(f64, u64)>,
    /// Every observation.
    pub count: u64,
    /// Their sum, in the bounds' unit.
    pub sum: f64,
}

/// Heartbeats on one path since the node was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathCounts {
    /// Heartbeats sent on this path.
    pub sent: u64,
    /// Valid acknowledgements that came back on it.
    pub acked: u64,
    /// Heartbeats sent on it whose timeout passed with no valid answer
    /// from any path.
    pub timed_out: u64,
}

/// Liveness events since the node was built, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransitionCounts {
    /// Registrations, and changes to one.
    pub registered: u64,
    /// Peers that became alive.
    pub peer_up: u64,
    /// Peers declared unreachable.
    pub peer_down: u64,
    /// Restarts seen (a higher epoch than the last one).
    pub restarted: u64,
    /// Answers from another identity than the registered one.
    pub identity_mismatch: u64,
    /// Deregistrations.
    pub deregistered: u64,
    /// Peers that began to be reached only through other nodes.
    pub reached_indirectly: u64,
}

/// A copy of a node's work counters ([`crate::HeartbeatServer::metrics`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeMetrics {
    /// Heartbeats over UDP datagrams.
    pub datagram: PathCounts,
    /// Heartbeats over gRPC calls.
    pub grpc: PathCounts,
    /// Round-trip time of every valid acknowledgement, in seconds.
    pub rtt_seconds: HistogramSnapshot,
    /// Liveness events by kind.
    pub transitions: TransitionCounts,
    /// How long each synced registry write took, in seconds.
    pub registry_write_seconds: HistogramSnapshot,
    /// How many changes each synced registry write carried.
    pub registry_group_size: HistogramSnapshot,
}

#[derive(Debug, Default)]
struct PathAtomics {
    sent: AtomicU64,
    acked: AtomicU64,
    timed_out: AtomicU64,
}

impl PathAtomics {
    fn snapshot(&self) -> PathCounts {
        PathCounts {
            sent: self.sent.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
        }
    }
}

/// The live counters behind [`NodeMetrics`].
#[derive(Debug)]
pub(crate) struct Metrics {
    datagram: PathAtomics,
    grpc: PathAtomics,
    rtt: Histogram,
    transitions: [AtomicU64; 7],
    write: Histogram,
    group: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            datagram: PathAtomics::default(),
            grpc: PathAtomics::default(),
            rtt: Histogram::new(RTT_BUCKETS, 1e6),
            transitions: Default::default(),
            write: Histogram::new(WRITE_BUCKETS, 1e6),
            group: Histogram::new(GROUP_BUCKETS, 1.0),
        }
    }
}

fn add(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// The counts of a heartbeat path; indirect rounds are counted apart
    /// ([`crate::IndirectStats`]).
    fn path(&self, path: Path) -> Option<&PathAtomics> {
        match path {
            Path::Datagram => Some(&self.datagram),
            Path::Grpc => Some(&self.grpc),
            Path::Indirect => None,
        }
    }

    pub(crate) fn sent(&self, path: Path) {
        if let Some(p) = self.path(path) {
            add(&p.sent);
        }
    }

    pub(crate) fn acked(&self, path: Path, rtt: Option<Duration>) {
        let Some(p) = self.path(path) else {
            return;
        };
        add(&p.acked);
        if let Some(rtt) = rtt {
            self.rtt.record_duration(rtt);
        }
    }

    pub(crate) fn timed_out(&self, path: Path) {
        if let Some(p) = self.path(path) {
            add(&p.timed_out);
        }
    }

    pub(crate) fn transition(&self, kind: &EventKind) {
        let i = match kind {
            EventKind::Registered => 0,
            EventKind::PeerUp => 1,
            EventKind::PeerDown => 2,
            EventKind::Restarted { .. } => 3,
            EventKind::IdentityMismatch { .. } => 4,
            EventKind::Deregistered => 5,
            EventKind::ReachedIndirectly { .. } => 6,
        };
        add(&self.transitions[i]);
    }

    pub(crate) fn registry_write(&self, took: Duration, changes: usize) {
        self.write.record_duration(took);
        self.group
            .record_units(u64::try_from(changes).unwrap_or(u64::MAX));
    }

    pub(crate) fn snapshot(&self) -> NodeMetrics {
        let t = |i: usize| self.transitions[i].load(Ordering::Relaxed);
        NodeMetrics {
            datagram: self.datagram.snapshot(),
            grpc: self.grpc.snapshot(),
            rtt_seconds: self.rtt.snapshot(),
            transitions: TransitionCounts {
                registered: t(0),
                peer_up: t(1),
                peer_down: t(2),
                restarted: t(3),
                identity_mismatch: t(4),
                deregistered: t(5),
                reached_indirectly: t(6),
            },
            registry_write_seconds: self.write.snapshot(),
            registry_group_size: self.group.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::new(RTT_BUCKETS, 1e6);
        h.record_duration(Duration::from_micros(100)); // exactly 0.0001
        h.record_duration(Duration::from_micros(101));
        h.record_duration(Duration::from_secs(3)); // past every bound
        let s = h.snapshot();
        assert_eq!(s.buckets[0], (0.0001, 1));
        assert_eq!(s.buckets[1], (0.00025, 2));
        assert_eq!(s.buckets.last().map(|b| b.1), Some(2));
        assert_eq!(s.count, 3);
        assert_eq!(s.sum, 3.000201, "the nearest double, printed as such");
    }

    #[test]
    fn counts_go_to_their_path_and_kind() {
        let m = Metrics::default();
        m.sent(Path::Datagram);
        m.sent(Path::Grpc);
        m.sent(Path::Grpc);
        m.acked(Path::Grpc, Some(Duration::from_millis(2)));
        m.timed_out(Path::Datagram);
        m.transition(&EventKind::PeerDown);
        m.transition(&EventKind::Restarted { previous: 1 });
        m.registry_write(Duration::from_millis(1), 3);
        let s = m.snapshot();
        assert_eq!(
            (s.datagram, s.grpc),
            (
                PathCounts {
                    sent: 1,
                    acked: 0,
                    timed_out: 1
                },
                PathCounts {
                    sent: 2,
                    acked: 1,
                    timed_out: 0
                }
            )
        );
        assert_eq!(s.rtt_seconds.count, 1);
        assert_eq!((s.transitions.peer_down, s.transitions.restarted), (1, 1));
        assert_eq!(s.transitions.peer_up, 0);
        assert_eq!(s.registry_group_size.buckets[2], (4.0, 1));
        assert_eq!(s.registry_group_size.buckets[1], (2.0, 0));
    }
}
