//! The liveness of one peer: a state machine fed with the outcome of each
//! heartbeat, in injected time.
//!
//! Rules (DESIGN.md section 4, made exact):
//! - every heartbeat gets exactly one outcome from the driver: a reply, or no
//!   reply (its timeout expired or it could not be sent);
//! - a reply is *valid* when it comes within `timeout` of the send, from the
//!   registered identity, with an epoch no lower than the last one seen;
//! - a valid reply resets the miss count and makes the peer `Alive`;
//! - a heartbeat without a valid reply is a miss, unless a later heartbeat was
//!   already acknowledged (it is then not part of a consecutive run);
//! - when the consecutive misses reach `max_missed` the peer is `Unreachable`;
//!   since a miss is counted when its timeout expires, a peer that dies is
//!   declared unreachable within `max_missed x frequency + timeout` of its last
//!   valid reply;
//! - a higher epoch than the last one seen is a restart; a lower one is a
//!   stale incarnation and is not an acknowledgement;
//! - a reply from another identity is not an acknowledgement and is reported
//!   once per run of such replies.

use std::time::{Duration, Instant};

use crate::config::DetectorConfig;
use crate::detector::{FailureDetector, MissCountDetector};

/// Liveness of a peer as its monitor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PeerState {
    /// No valid reply yet since registration (or since the monitor started).
    #[default]
    Unknown,
    /// Answering validly.
    Alive,
    /// `max_missed` consecutive heartbeats went without a valid reply.
    Unreachable,
}

impl PeerState {
    /// Upper-case name, as shown by the CLI (`ALIVE`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Unknown => "UNKNOWN",
            PeerState::Alive => "ALIVE",
            PeerState::Unreachable => "UNREACHABLE",
        }
    }
}

impl std::fmt::Display for PeerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change in a peer's liveness, reported by [`PeerLiveness`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The peer became `Alive`.
    Up,
    /// The peer became `Unreachable`.
    Down,
    /// The peer answered with a higher epoch than the last one seen.
    Restarted {
        /// The epoch seen before.
        previous: u64,
        /// The epoch now seen.
        current: u64,
    },
    /// Something answered for the peer with another identity.
    IdentityMismatch {
        /// The identity that answered.
        observed: String,
    },
}

/// What a reply said about its sender.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    /// The identity the responder claims.
    pub responder_id: &'a str,
    /// The responder's epoch.
    pub responder_epoch: u64,
}

/// Per-peer liveness state. About a hundred bytes; no allocation after
/// construction.
#[derive(Debug, Clone)]
pub struct PeerLiveness<D = MissCountDetector> {
    /// The one part of the configuration this needs; the rest lives with
    /// the registration, and a copy here would cost every peer 24 bytes.
    timeout: Duration,
    detector: D,
    state: PeerState,
    epoch: Option<u64>,
    next_seq: u64,
    /// Highest sequence number validly acknowledged; 0 before the first.
    last_acked_seq: u64,
    /// Which of the last 64 heartbeats already have their outcome: bit `i`
    /// is heartbeat `next_seq - 1 - i`. A heartbeat may travel two paths and
    /// a datagram may arrive twice; only its first outcome counts.
    resolved: u64,
    sent: u64,
    acked: u64,
    last_rtt: Option<Duration>,
    mismatch_reported: bool,
}

impl PeerLiveness<MissCountDetector> {
    /// A fresh peer judged by the seeds' miss counter. `known_epoch` is the
    /// epoch remembered from before a restart of the monitor, if any.
    pub fn new(config: DetectorConfig, known_epoch: Option<u64>) -> Self {
        Self::with_detector(
            config,
            MissCountDetector::new(config.max_missed),
            known_epoch,
        )
    }
}

impl<D: FailureDetector> PeerLiveness<D> {
    /// A fresh peer judged by `detector`.
    pub fn with_detector(config: DetectorConfig, detector: D, known_epoch: Option<u64>) -> Self {
        Self {
            timeout: config.timeout,
            detector,
            state: PeerState::Unknown,
            epoch: known_epoch,
            next_seq: 1,
            last_acked_seq: 0,
            resolved: u64::MAX,
            sent: 0,
            acked: 0,
            last_rtt: None,
            mismatch_reported: false,
        }
    }

    /// Records a heartbeat sent at `now`; returns its sequence number, which
    /// the driver hands back with the heartbeat's outcome.
    pub fn on_send(&mut self, _now: Instant) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.sent += 1;
        self.resolved <<= 1;
        seq
    }

    /// Marks heartbeat `seq` as settled; returns false if it already was.
    /// Heartbeats older than the last 64 are not tracked and always pass:
    /// their timeout is then more than 64 periods, and they can have only
    /// the one outcome their timeout gives them.
    fn settle(&mut self, seq: u64) -> bool {
        let Some(age) = self.next_seq.checked_sub(seq + 1) else {
            return false;
        };
        if age >= 64 {
            return true;
        }
        let bit = 1u64 << age;
        let fresh = self.resolved & bit == 0;
        self.resolved |= bit;
        fresh
    }

    /// Drops heartbeat `seq` without counting it either way: the driver
    /// learned the path it took cannot carry it, and will use another.
    pub fn forget(&mut self, seq: u64) {
        self.settle(seq);
    }

    /// A reply arrived at `now` for heartbeat `seq`, sent at `sent_at`, to a
    /// peer registered as `expected_id`.
    pub fn on_reply(
        &mut self,
        seq: u64,
        sent_at: Instant,
        now: Instant,
        expected_id: &str,
        reply: Reply<'_>,
    ) -> Vec<Change> {
        let rtt = now.saturating_duration_since(sent_at);
        if rtt > self.timeout {
            return self.on_no_reply(seq, now);
        }
        if !self.settle(seq) {
            return Vec::new();
        }
        if reply.responder_id != expected_id {
            let mut changes = Vec::new();
            if !self.mismatch_reported {
                self.mismatch_reported = true;
                changes.push(Change::IdentityMismatch {
                    observed: reply.responder_id.to_owned(),
                });
            }
            changes.extend(self.count_miss(seq, now));
            return changes;
        }
        self.mismatch_reported = false;
        if matches!(self.epoch, Some(known) if reply.responder_epoch < known) {
            return self.count_miss(seq, now);
        }

        let mut changes = Vec::new();
        self.detector.on_ack(now, rtt);
        self.last_acked_seq = self.last_acked_seq.max(seq);
        self.acked += 1;
        self.last_rtt = Some(rtt);
        if let Some(previous) = self.epoch {
            if reply.responder_epoch > previous {
                changes.push(Change::Restarted {
                    previous,
                    current: reply.responder_epoch,
                });
            }
        }
        self.epoch = Some(reply.responder_epoch);
        if self.state != PeerState::Alive {
            self.state = PeerState::Alive;
            changes.push(Change::Up);
        }
        changes
    }

    /// Heartbeat `seq` got no valid reply: its timeout expired at `now`, or it
    /// could not be sent.
    pub fn on_no_reply(&mut self, seq: u64, now: Instant) -> Vec<Change> {
        if !self.settle(seq) {
            return Vec::new();
        }
        self.count_miss(seq, now)
    }

    fn count_miss(&mut self, seq: u64, now: Instant) -> Vec<Change> {
        if seq <= self.last_acked_seq {
            return Vec::new();
        }
        self.detector.on_miss(now);
        if self.detector.is_suspect(now) && self.state != PeerState::Unreachable {
            self.state = PeerState::Unreachable;
            return vec![Change::Down];
        }
        Vec::new()
    }

    /// Applies a new configuration (a re-registration): the evidence gathered
    /// under the old one is dropped, the state and epoch are kept.
    pub fn reconfigure(&mut self, config: DetectorConfig, detector: D) {
        self.timeout = config.timeout;
        self.detector = detector;
        self.last_acked_seq = self.next_seq.saturating_sub(1);
        self.resolved = u64::MAX;
    }

    /// Current state.
    pub fn state(&self) -> PeerState {
        self.state
    }

    /// Last epoch seen in a valid reply (or remembered from before a restart).
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// Heartbeats sent.
    pub fn heartbeats_sent(&self) -> u64 {
        self.sent
    }

    /// Heartbeats validly acknowledged.
    pub fn heartbeats_acked(&self) -> u64 {
        self.acked
    }

    /// Round-trip time of the last valid reply.
    pub fn last_rtt(&self) -> Option<Duration> {
        self.last_rtt
    }

    /// Consecutive misses right now.
    pub fn missed(&self) -> u32 {
        self.detector.missed()
    }

    /// How long after its sending a reply still counts.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "peer-a";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn reply(epoch: u64) -> Reply<'static> {
        Reply {
            responder_id: ID,
            responder_epoch: epoch,
        }
    }

    /// Rate 100 ms, timeout 100 ms, three misses.
    fn peer() -> PeerLiveness {
        PeerLiveness::new(DetectorConfig::new(ms(100), None, None).unwrap(), None)
    }

    #[test]
    fn first_valid_reply_makes_the_peer_alive_and_learns_its_epoch() {
        let t0 = Instant::now();
        let mut p = peer();
        assert_eq!(p.state(), PeerState::Unknown);
        let seq = p.on_send(t0);
        let changes = p.on_reply(seq, t0, t0 + ms(3), ID, reply(7));
        assert_eq!(changes, vec![Change::Up]);
        assert_eq!(p.state(), PeerState::Alive);
        assert_eq!(p.epoch(), Some(7));
        assert_eq!(p.last_rtt(), Some(ms(3)));
        assert_eq!((p.heartbeats_sent(), p.heartbeats_acked()), (1, 1));
    }

    #[test]
    fn max_missed_consecutive_misses_make_the_peer_unreachable_exactly_once() {
        let t0 = Instant::now();
        let mut p = peer();
        let s = p.on_send(t0);
        p.on_reply(s, t0, t0 + ms(1), ID, reply(1));
        // Three heartbeats at 100, 200, 300 ms; each expires 100 ms later.
        let s1 = p.on_send(t0 + ms(100));
        let s2 = p.on_send(t0 + ms(200));
        assert!(p.on_no_reply(s1, t0 + ms(200)).is_empty());
        let s3 = p.on_send(t0 + ms(300));
        assert!(p.on_no_reply(s2, t0 + ms(300)).is_empty());
        assert_eq!(p.state(), PeerState::Alive);
        assert_eq!(p.missed(), 2);
        // The third miss lands at 400 ms = 3 x 100 + 100 after the last reply.
        assert_eq!(p.on_no_reply(s3, t0 + ms(400)), vec![Change::Down]);
        assert_eq!(p.state(), PeerState::Unreachable);
        let s4 = p.on_send(t0 + ms(400));
        assert!(p.on_no_reply(s4, t0 + ms(500)).is_empty(), "reported once");
        assert_eq!(p.missed(), 4);
    }

    #[test]
    fn a_heartbeat_counts_once_whichever_path_answers_first() {
        let t0 = Instant::now();
        let mut p = peer();
        let s1 = p.on_send(t0);
        assert_eq!(
            p.on_reply(s1, t0, t0 + ms(2), ID, reply(1)),
            vec![Change::Up]
        );
        // The same heartbeat answered again (a second path, a duplicated
        // datagram) and then timing out on a third: no effect.
        assert!(p.on_reply(s1, t0, t0 + ms(3), ID, reply(1)).is_empty());
        assert!(p.on_no_reply(s1, t0 + ms(100)).is_empty());
        assert_eq!((p.heartbeats_acked(), p.missed()), (1, 0));
        // A timeout first, then a (timely) answer on the other path: one miss.
        let s2 = p.on_send(t0 + ms(100));
        assert!(p.on_no_reply(s2, t0 + ms(150)).is_empty());
        assert!(p
            .on_reply(s2, t0 + ms(100), t0 + ms(160), ID, reply(1))
            .is_empty());
        assert_eq!((p.heartbeats_acked(), p.missed()), (1, 1));
    }

    #[test]
    fn a_forgotten_heartbeat_is_neither_a_reply_nor_a_miss() {
        let t0 = Instant::now();
        let mut p = PeerLiveness::new(DetectorConfig::new(ms(100), None, Some(1)).unwrap(), None);
        let s1 = p.on_send(t0);
        p.forget(s1);
        assert!(p.on_no_reply(s1, t0 + ms(100)).is_empty());
        assert!(p.on_reply(s1, t0, t0 + ms(5), ID, reply(1)).is_empty());
        assert_eq!(
            (p.state(), p.missed(), p.heartbeats_acked()),
            (PeerState::Unknown, 0, 0)
        );
        let s2 = p.on_send(t0 + ms(100));
        assert_eq!(p.on_no_reply(s2, t0 + ms(200)), vec![Change::Down]);
    }

    #[test]
    fn outcomes_of_heartbeats_never_sent_are_ignored() {
        let t0 = Instant::now();
        let mut p = PeerLiveness::new(DetectorConfig::new(ms(100), None, Some(1)).unwrap(), None);
        assert!(p.on_no_reply(0, t0).is_empty());
        assert!(p.on_no_reply(1, t0).is_empty());
        assert!(p.on_reply(5, t0, t0, ID, reply(1)).is_empty());
        assert_eq!(p.state(), PeerState::Unknown);
    }

    #[test]
    fn a_reply_after_the_timeout_does_not_count() {
        let t0 = Instant::now();
        let mut p = peer();
        let s = p.on_send(t0);
        let changes = p.on_reply(s, t0, t0 + ms(101), ID, reply(1));
        assert!(changes.is_empty());
        assert_eq!(p.state(), PeerState::Unknown);
        assert_eq!(p.missed(), 1);
        assert_eq!(p.heartbeats_acked(), 0);
        // Exactly at the timeout still counts.
        let s = p.on_send(t0 + ms(100));
        assert_eq!(
            p.on_reply(s, t0 + ms(100), t0 + ms(200), ID, reply(1)),
            vec![Change::Up]
        );
    }

    #[test]
    fn a_valid_reply_resets_the_miss_count() {
        let t0 = Instant::now();
        let mut p = peer();
        for i in 0..2 {
            let s = p.on_send(t0 + ms(100 * i));
            p.on_no_reply(s, t0 + ms(100 * i + 100));
        }
        assert_eq!(p.missed(), 2);
        let s = p.on_send(t0 + ms(200));
        p.on_reply(s, t0 + ms(200), t0 + ms(250), ID, reply(1));
        assert_eq!(p.missed(), 0);
        for i in 3..5 {
            let s = p.on_send(t0 + ms(100 * i));
            p.on_no_reply(s, t0 + ms(100 * i + 100));
        }
        assert_eq!(p.state(), PeerState::Alive, "two misses after a reset");
    }

    #[test]
    fn an_unreachable_peer_that_answers_is_alive_again() {
        let t0 = Instant::now();
        let mut p = peer();
        for i in 0..3 {
            let s = p.on_send(t0 + ms(100 * i));
            p.on_no_reply(s, t0 + ms(100 * i + 100));
        }
        assert_eq!(p.state(), PeerState::Unreachable, "never answered");
        let s = p.on_send(t0 + ms(300));
        assert_eq!(
            p.on_reply(s, t0 + ms(300), t0 + ms(301), ID, reply(4)),
            vec![Change::Up]
        );
    }

    #[test]
    fn a_higher_epoch_is_a_restart() {
        let t0 = Instant::now();
        let mut p = peer();
        let s = p.on_send(t0);
        p.on_reply(s, t0, t0, ID, reply(2));
        let s = p.on_send(t0 + ms(100));
        let changes = p.on_reply(s, t0 + ms(100), t0 + ms(101), ID, reply(3));
        assert_eq!(
            changes,
            vec![Change::Restarted {
                previous: 2,
                current: 3
            }]
        );
        assert_eq!(p.epoch(), Some(3));
    }

    #[test]
    fn a_restart_seen_after_an_outage_reports_restart_then_up() {
        let t0 = Instant::now();
        let cfg = DetectorConfig::new(ms(100), None, Some(1)).unwrap();
        let mut p = PeerLiveness::new(cfg, Some(5));
        let s = p.on_send(t0);
        assert_eq!(p.on_no_reply(s, t0 + ms(100)), vec![Change::Down]);
        let s = p.on_send(t0 + ms(100));
        assert_eq!(
            p.on_reply(s, t0 + ms(100), t0 + ms(110), ID, reply(6)),
            vec![
                Change::Restarted {
                    previous: 5,
                    current: 6
                },
                Change::Up
            ]
        );
    }

    #[test]
    fn a_lower_epoch_is_a_stale_incarnation_and_ignored() {
        let t0 = Instant::now();
        let mut p = peer();
        let s = p.on_send(t0);
        p.on_reply(s, t0, t0, ID, reply(9));
        let s = p.on_send(t0 + ms(100));
        assert!(p
            .on_reply(s, t0 + ms(100), t0 + ms(101), ID, reply(8))
            .is_empty());
        assert_eq!(p.epoch(), Some(9));
        assert_eq!(p.heartbeats_acked(), 1);
        assert_eq!(p.missed(), 1, "a stale reply is not an acknowledgement");
    }

    #[test]
    fn a_reply_from_another_identity_is_a_mismatch_not_an_ack() {
        let t0 = Instant::now();
        let mut p = peer();
        let other = Reply {
            responder_id: "intruder",
            responder_epoch: 1,
        };
        let s = p.on_send(t0);
        assert_eq!(
            p.on_reply(s, t0, t0 + ms(1), ID, other),
            vec![Change::IdentityMismatch {
                observed: "intruder".into()
            }]
        );
        assert_eq!(p.state(), PeerState::Unknown);
        assert_eq!(p.heartbeats_acked(), 0);
        let s = p.on_send(t0 + ms(100));
        assert!(
            p.on_reply(s, t0 + ms(100), t0 + ms(101), ID, other)
                .is_empty(),
            "reported once per run"
        );
        let s = p.on_send(t0 + ms(200));
        assert_eq!(
            p.on_reply(s, t0 + ms(200), t0 + ms(201), ID, other),
            vec![Change::Down],
            "three mismatches are three misses"
        );
    }

    #[test]
    fn a_miss_older_than_the_last_ack_is_not_consecutive() {
        let t0 = Instant::now();
        let cfg = DetectorConfig::new(ms(100), Some(ms(250)), None).unwrap();
        let mut p = PeerLiveness::new(cfg, None);
        let s1 = p.on_send(t0);
        let s2 = p.on_send(t0 + ms(100));
        p.on_reply(s2, t0 + ms(100), t0 + ms(120), ID, reply(1));
        assert!(p.on_no_reply(s1, t0 + ms(250)).is_empty());
        assert_eq!(p.missed(), 0);
    }

    #[test]
    fn reconfiguring_drops_evidence_but_keeps_state_and_epoch() {
        let t0 = Instant::now();
        let mut p = peer();
        let s = p.on_send(t0);
        p.on_reply(s, t0, t0, ID, reply(3));
        let s = p.on_send(t0 + ms(100));
        p.on_no_reply(s, t0 + ms(200));
        let cfg = DetectorConfig::new(ms(50), None, Some(5)).unwrap();
        p.reconfigure(cfg, MissCountDetector::new(cfg.max_missed));
        assert_eq!(p.missed(), 0);
        assert_eq!(p.state(), PeerState::Alive);
        assert_eq!(p.epoch(), Some(3));
        assert_eq!(p.timeout(), cfg.timeout);
    }
}
