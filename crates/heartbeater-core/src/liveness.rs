//! The liveness of one peer: a state machine fed with the outcome of each
//! heartbeat, in injected time.
//!
//! Rules (DESIGN.md section 4, made exact):
//! - every heartbeat gets exactly one outcome: a reply, or no reply (its
//!   timeout expired, every path it was sent on failed, or it was displaced
//!   from the window of [`crate::probe::PROBE_WINDOW`] heartbeats in flight);
//! - a reply counts only if it names a heartbeat still in flight, on a path
//!   that heartbeat was sent on; its round-trip time is measured with this
//!   state machine's own record of the send, never with anything the reply
//!   says;
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
//!   once per run of such replies;
//! - with indirect probes on ([`PeerLiveness::set_indirect`]), the miss that
//!   would convict opens an *indirect round* instead ([`Change::Suspect`]):
//!   the driver asks other nodes to heartbeat the peer, and one valid answer
//!   through them before the round's timeout counts as a valid reply (the
//!   peer is then *reached indirectly* until a direct reply comes), while a
//!   round without one convicts; a peer that dies is then unreachable within
//!   `max_missed x frequency + 2 x timeout` of its last valid reply.

use std::time::{Duration, Instant};

use crate::config::DetectorConfig;
use crate::detector::{FailureDetector, MissCountDetector};
use crate::probe::{Path, Paths, ProbeWindow, Settled};

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
        /// The identity that answered, as [`crate::identity::shown_identity`]
        /// makes it safe to show.
        observed: String,
    },
    /// The peer would be convicted: an indirect probe round is open under
    /// sequence number `seq` until `until`, and the driver must ask helpers
    /// to heartbeat the peer (or fail the round on
    /// [`crate::probe::Path::Indirect`] if it has none).
    Suspect {
        /// Names the round, as a heartbeat's sequence number does.
        seq: u64,
        /// When the round times out without an answer, convicting the peer.
        until: Instant,
    },
    /// The peer answered only through other nodes: it is alive, and the
    /// path between the monitor and it is what fails. Reported once per run
    /// of indirect answers.
    ReachedIndirectly {
        /// The helper that carried the answer, when the driver named it.
        via: Option<String>,
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

/// When a reply arrived, as far as its reader can know: it read the reply
/// at `read`, and had found nothing waiting at `after`, so the reply came
/// in between. A reader that falls behind (an overloaded monitor) widens
/// the window; a reply is late only if it was late at `after`, so the
/// monitor's own lag never turns a timely answer into a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// The last time the reader found no reply waiting on this path.
    pub after: Instant,
    /// When the reader took this reply.
    pub read: Instant,
}

impl Arrival {
    /// A reply read the moment it arrived.
    pub fn at(t: Instant) -> Self {
        Self { after: t, read: t }
    }
}

/// What became of a reply handed to [`PeerLiveness::on_reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyVerdict {
    /// A valid acknowledgement.
    Accepted,
    /// Not a heartbeat in flight: never sent, already settled, or out of the
    /// window. Ignored; changes nothing.
    NotInFlight,
    /// The heartbeat was not sent on the path the reply came by. Ignored.
    WrongPath,
    /// Later than the timeout: the heartbeat is settled as unanswered (a
    /// miss, unless it was a trial). Its identity and epoch are not looked at.
    Late,
    /// From another identity than the registered one: a miss.
    WrongIdentity,
    /// From an older incarnation than the last one seen: a miss.
    StaleEpoch,
}

impl ReplyVerdict {
    /// Whether the reply matched a heartbeat in flight (and so settled it,
    /// as an acknowledgement or as a miss).
    pub fn matched(self) -> bool {
        !matches!(self, ReplyVerdict::NotInFlight | ReplyVerdict::WrongPath)
    }
}

/// What is seldom said about a peer, boxed so that the common case costs
/// one pointer: who answers in its place, and through whom it was last
/// reached when only other nodes reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Remarks {
    /// The identity the last reply of the current run of replies from
    /// another identity carried (made safe to show).
    pub(crate) answers_as: Option<Box<str>>,
    /// While the peer is reached only indirectly: the helpers whose answers
    /// kept it alive, the latest first, at most [`MAX_VIA`].
    pub(crate) reached_via: Vec<Box<str>>,
}

/// Helpers remembered per peer reached indirectly.
pub const MAX_VIA: usize = 8;

impl Remarks {
    fn is_empty(&self) -> bool {
        self.answers_as.is_none() && self.reached_via.is_empty()
    }
}

/// `indirect` bit: indirect probe rounds are on for this peer.
const INDIRECT_ON: u8 = 1;
/// `indirect` bit: the last valid reply came through other nodes.
const REACHED_INDIRECTLY: u8 = 2;

/// Per-peer liveness state: about 160 bytes with the default detector, no
/// allocation after construction but the identity of a peer that answers
/// as another, or the helpers of a peer reached indirectly.
#[derive(Debug, Clone)]
pub struct PeerLiveness<D = MissCountDetector> {
    /// The one part of the configuration this needs; the rest lives with
    /// the registration, and a copy here would cost every peer 24 bytes.
    timeout: Duration,
    /// Consecutive valid replies that bring an unreachable peer back: at
    /// most [`crate::config::MAX_RISE`], so a byte holds it.
    rise: u8,
    /// Consecutive valid replies since the last miss, saturating: it is only
    /// ever compared with `rise`.
    streak: u8,
    /// `INDIRECT_ON` and `REACHED_INDIRECTLY`.
    indirect: u8,
    detector: D,
    state: PeerState,
    epoch: Option<u64>,
    window: ProbeWindow,
    /// Highest sequence number validly acknowledged; 0 before the first.
    last_acked_seq: u64,
    sent: u64,
    acked: u64,
    /// Round-trip time of the last valid reply in microseconds, `NO_RTT`
    /// before the first: a reply counts only within its timeout, and 4
    /// bytes hold 71 minutes where an `Option<Duration>` takes 16.
    last_rtt_micros: u32,
    /// Who answers in the peer's place, through whom it is reached; `None`
    /// while neither (the common case costs a pointer).
    remarks: Option<Box<Remarks>>,
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

/// `last_rtt_micros` before any valid reply.
const NO_RTT: u32 = u32::MAX;

/// The configured rise as a byte: validation keeps it at most
/// [`crate::config::MAX_RISE`].
fn rise_of(config: DetectorConfig) -> u8 {
    u8::try_from(config.rise.get()).unwrap_or(u8::MAX)
}

impl<D: FailureDetector> PeerLiveness<D> {
    /// A fresh peer judged by `detector`.
    pub fn with_detector(config: DetectorConfig, detector: D, known_epoch: Option<u64>) -> Self {
        Self {
            timeout: config.timeout,
            rise: rise_of(config),
            streak: 0,
            indirect: 0,
            detector,
            state: PeerState::Unknown,
            epoch: known_epoch,
            window: ProbeWindow::default(),
            last_acked_seq: 0,
            sent: 0,
            acked: 0,
            last_rtt_micros: NO_RTT,
            remarks: None,
        }
    }

    /// Records a heartbeat sent at `now`; returns its sequence number, which
    /// names it in every later call. A heartbeat displaced from a full
    /// window gets its outcome (no reply) here, into `out`.
    pub fn on_send(&mut self, now: Instant, out: &mut Vec<Change>) -> u64 {
        let (seq, displaced) = self.window.push(now);
        self.sent = self.sent.saturating_add(1);
        if let Some((old, settled)) = displaced {
            self.no_reply(old, settled, now, out);
        }
        // A time-based detector may convict on the clock alone.
        self.judge(now, out);
        seq
    }

    /// Records that heartbeat `seq` went out over `path`. With `trial`, its
    /// silence is not held against the peer (a first datagram to a peer that
    /// may not speak UDP). Returns false if `seq` is not in flight.
    pub fn mark_sent(&mut self, seq: u64, path: Path, trial: bool) -> bool {
        self.window.mark(seq, path, trial)
    }

    /// A reply to heartbeat `seq` arrived over `path` at `now`, for a peer
    /// registered as `expected_id`.
    pub fn on_reply(
        &mut self,
        seq: u64,
        path: Path,
        now: Instant,
        expected_id: &str,
        reply: Reply<'_>,
        out: &mut Vec<Change>,
    ) -> ReplyVerdict {
        self.on_reply_in(seq, path, Arrival::at(now), expected_id, reply, out)
    }

    /// [`PeerLiveness::on_reply`] for a reply that arrived within `arrival`:
    /// its RTT is measured to the read, its lateness judged at the earliest
    /// moment it may have come.
    pub fn on_reply_in(
        &mut self,
        seq: u64,
        path: Path,
        arrival: Arrival,
        expected_id: &str,
        reply: Reply<'_>,
        out: &mut Vec<Change>,
    ) -> ReplyVerdict {
        self.reply_in(seq, path, arrival, expected_id, reply, None, out)
    }

    /// An answer to indirect round `seq`, carried by helper `via`: what the
    /// helper saw of the peer. It counts as a valid reply only if it comes
    /// within the round's timeout with the registered identity and an epoch
    /// no lower than the last one seen; any other answer is ignored (another
    /// helper may still answer), and the round's timeout convicts.
    pub fn on_indirect_reply(
        &mut self,
        seq: u64,
        arrival: Arrival,
        expected_id: &str,
        reply: Reply<'_>,
        via: &str,
        out: &mut Vec<Change>,
    ) -> ReplyVerdict {
        self.reply_in(
            seq,
            Path::Indirect,
            arrival,
            expected_id,
            reply,
            Some(via),
            out,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn reply_in(
        &mut self,
        seq: u64,
        path: Path,
        arrival: Arrival,
        expected_id: &str,
        reply: Reply<'_>,
        via: Option<&str>,
        out: &mut Vec<Change>,
    ) -> ReplyVerdict {
        let now = arrival.read;
        match self.window.paths(seq) {
            None => return ReplyVerdict::NotInFlight,
            Some(paths) if !paths.contains(path) => return ReplyVerdict::WrongPath,
            Some(_) => {}
        }
        let Some(rtt) = self.window.age(seq, now) else {
            return ReplyVerdict::NotInFlight;
        };
        if path == Path::Indirect {
            // A helper's word about someone else answering, or an old
            // incarnation, settles nothing: another helper may still reach
            // the registered peer, and the round's timeout convicts.
            if reply.responder_id != expected_id {
                return ReplyVerdict::WrongIdentity;
            }
            if matches!(self.epoch, Some(known) if reply.responder_epoch < known) {
                return ReplyVerdict::StaleEpoch;
            }
        }
        let Some(settled) = self.window.settle(seq) else {
            return ReplyVerdict::NotInFlight;
        };
        let unread_for = arrival.read.saturating_duration_since(arrival.after);
        if rtt.saturating_sub(unread_for) > self.timeout {
            self.no_reply(seq, settled, now, out);
            return ReplyVerdict::Late;
        }
        if reply.responder_id != expected_id {
            // The identity is whatever the network sent: kept and reported
            // only in a form that cannot steer a terminal or fill a log.
            let observed = crate::identity::shown_identity(reply.responder_id);
            let remarks = self.remarks.get_or_insert_with(Box::default);
            let reported = remarks.answers_as.is_some();
            if remarks.answers_as.as_deref() != Some(&*observed) {
                remarks.answers_as = Some(Box::from(&*observed));
            }
            if !reported {
                out.push(Change::IdentityMismatch {
                    observed: observed.into_owned(),
                });
            }
            self.count_miss(seq, now, out);
            return ReplyVerdict::WrongIdentity;
        }
        self.edit_remarks(|r| r.answers_as = None);
        if matches!(self.epoch, Some(known) if reply.responder_epoch < known) {
            self.count_miss(seq, now, out);
            return ReplyVerdict::StaleEpoch;
        }
        self.detector.on_ack(now, rtt);
        self.last_acked_seq = self.last_acked_seq.max(seq);
        if path == Path::Indirect {
            // Alive, through others: the RTT and the count of acknowledged
            // heartbeats stay those of the monitor's own path.
            let first = self.indirect & REACHED_INDIRECTLY == 0;
            self.indirect |= REACHED_INDIRECTLY;
            if let Some(via) = via {
                let via = crate::identity::shown_identity(via);
                let remarks = self.remarks.get_or_insert_with(Box::default);
                remarks.reached_via.retain(|v| **v != *via);
                remarks.reached_via.insert(0, Box::from(&*via));
                remarks.reached_via.truncate(MAX_VIA);
            }
            if first {
                out.push(Change::ReachedIndirectly {
                    via: via.map(|v| crate::identity::shown_identity(v).into_owned()),
                });
            }
        } else {
            self.acked = self.acked.saturating_add(1);
            self.last_rtt_micros = u32::try_from(rtt.as_micros())
                .unwrap_or(NO_RTT - 1)
                .min(NO_RTT - 1);
            self.indirect &= !REACHED_INDIRECTLY;
            self.edit_remarks(|r| r.reached_via.clear());
        }
        if let Some(previous) = self.epoch {
            if reply.responder_epoch > previous {
                out.push(Change::Restarted {
                    previous,
                    current: reply.responder_epoch,
                });
            }
        }
        self.epoch = Some(reply.responder_epoch);
        self.streak = self.streak.saturating_add(1);
        // Hysteresis: an unreachable peer comes back after `rise` valid
        // replies in a row, not at the first one that gets through.
        let back = self.state != PeerState::Unreachable || self.streak >= self.rise;
        if self.state != PeerState::Alive && back {
            self.state = PeerState::Alive;
            out.push(Change::Up);
        }
        ReplyVerdict::Accepted
    }

    /// Sending heartbeat `seq` over `path` failed (an error came back, or it
    /// could not leave). When no other path still carries it, it is settled
    /// as a miss at once, rather than at its timeout.
    pub fn on_path_failed(&mut self, seq: u64, path: Path, now: Instant, out: &mut Vec<Change>) {
        match self.window.unmark(seq, path) {
            Some(left) if left.is_empty() => {
                if let Some(settled) = self.window.settle(seq) {
                    self.no_reply(seq, settled, now, out);
                }
            }
            _ => {}
        }
    }

    /// Heartbeat `seq` reached its timeout at `now`. Returns the paths it was
    /// sent on and whether its silence counted, or `None` if it already had
    /// its outcome.
    pub fn on_expired(
        &mut self,
        seq: u64,
        now: Instant,
        out: &mut Vec<Change>,
    ) -> Option<(Paths, bool)> {
        let settled = self.window.settle(seq)?;
        let counted = self.no_reply(seq, settled, now, out);
        Some((settled.paths, counted))
    }

    /// Heartbeat `seq` gets no outcome: the monitor could not carry it
    /// (its own send buffer was full, its budget of calls spent), so neither
    /// an answer nor its silence may count. Returns whether it was in flight.
    pub fn void(&mut self, seq: u64) -> bool {
        self.window.settle(seq).is_some()
    }

    /// Whether heartbeat `seq` still waits for its outcome.
    pub fn is_in_flight(&self, seq: u64) -> bool {
        self.window.in_flight(seq)
    }

    /// Heartbeats waiting for their outcome.
    pub fn in_flight(&self) -> usize {
        self.window.len()
    }

    /// Returns whether the silence counted as a miss.
    fn no_reply(
        &mut self,
        seq: u64,
        settled: Settled,
        now: Instant,
        out: &mut Vec<Change>,
    ) -> bool {
        if settled.round {
            // No helper reached the peer in time (or there was none): the
            // conviction the round held back, unless a direct reply came
            // meanwhile and the detector is at ease again.
            if self.state != PeerState::Unreachable && self.detector.is_suspect(now) {
                self.convict(out);
            }
            return false;
        }
        if !settled.counts {
            return false;
        }
        self.count_miss(seq, now, out)
    }

    /// Changes the seldom-used remarks, dropping the box once it is empty.
    fn edit_remarks(&mut self, f: impl FnOnce(&mut Remarks)) {
        if let Some(remarks) = self.remarks.as_mut() {
            f(remarks);
            if remarks.is_empty() {
                self.remarks = None;
            }
        }
    }

    fn convict(&mut self, out: &mut Vec<Change>) {
        self.state = PeerState::Unreachable;
        self.streak = 0;
        self.indirect &= !REACHED_INDIRECTLY;
        self.edit_remarks(|r| r.reached_via.clear());
        out.push(Change::Down);
    }

    fn count_miss(&mut self, seq: u64, now: Instant, out: &mut Vec<Change>) -> bool {
        if seq <= self.last_acked_seq {
            return false;
        }
        self.streak = 0;
        self.detector.on_miss(now);
        self.judge(now, out);
        true
    }

    fn judge(&mut self, now: Instant, out: &mut Vec<Change>) {
        if self.state == PeerState::Unreachable || !self.detector.is_suspect(now) {
            return;
        }
        if self.indirect & INDIRECT_ON == 0 {
            self.convict(out);
            return;
        }
        // Other nodes get a say first: one round at a time, which the
        // misses counted while it is open do not cut short.
        if self.window.round_in_flight() {
            return;
        }
        let (seq, displaced) = self.window.push(now);
        self.window.mark(seq, Path::Indirect, false);
        out.push(Change::Suspect {
            seq,
            until: now + self.timeout,
        });
        if let Some((old, settled)) = displaced {
            self.no_reply(old, settled, now, out);
        }
    }

    /// Turns indirect probe rounds on or off: with them on, the miss that
    /// would convict opens a round ([`Change::Suspect`]) instead. Turned
    /// off, a round in flight still ends as rounds do.
    pub fn set_indirect(&mut self, on: bool) {
        if on {
            self.indirect |= INDIRECT_ON;
        } else {
            self.indirect &= !INDIRECT_ON;
        }
    }

    /// Whether the last valid reply came through other nodes only.
    pub fn reached_indirectly(&self) -> bool {
        self.indirect & REACHED_INDIRECTLY != 0
    }

    /// The helpers through which the peer was last reached, the latest
    /// first, while it is reached only indirectly.
    pub fn reached_via(&self) -> impl Iterator<Item = &str> {
        self.remarks
            .iter()
            .flat_map(|r| r.reached_via.iter().map(|v| &**v))
    }

    pub(crate) fn remarks(&self) -> Option<&Remarks> {
        self.remarks.as_deref()
    }

    /// Applies a new configuration (a re-registration): the evidence gathered
    /// under the old one is dropped, including heartbeats in flight, whose
    /// outcomes no longer count; the state is kept, and the epoch too while
    /// the peer is ALIVE.
    pub fn reconfigure(&mut self, config: DetectorConfig, detector: D) {
        self.timeout = config.timeout;
        self.rise = rise_of(config);
        self.streak = 0;
        self.detector = detector;
        // The peer may have moved: whoever answers at the new address is
        // reported afresh, and so is the path to it.
        self.remarks = None;
        self.indirect &= !REACHED_INDIRECTLY;
        // A peer that is not answering may be held down by an epoch it never
        // had (a forged reply claiming the highest one makes every genuine
        // reply look stale): registering it again starts its epoch afresh.
        // An answering peer keeps its epoch, so that a restart is still seen.
        if self.state != PeerState::Alive {
            self.epoch = None;
        }
        self.void_in_flight();
    }

    /// The monitor was paused until `now`: the heartbeats in flight get no
    /// outcome (a late reply to one is not in flight any more, and its
    /// silence is not a miss), and the detector is told. Returns how many
    /// were voided.
    pub fn on_local_pause(&mut self, now: Instant) -> usize {
        let voided = self.window.len();
        self.void_in_flight();
        self.detector.on_local_pause(now);
        voided
    }

    /// Multiplies the detector's conviction threshold by `factor` (the
    /// monitor's [`crate::awareness`] tolerance).
    pub fn set_tolerance(&mut self, factor: u32) {
        self.detector.set_tolerance(factor);
    }

    fn void_in_flight(&mut self) {
        // No reply to a heartbeat up to here may count any more, nor its
        // silence: the same cut-off `count_miss` applies to answered ones.
        self.last_acked_seq = self.window.next_seq().saturating_sub(1);
        self.window.clear();
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
        (self.last_rtt_micros != NO_RTT)
            .then(|| Duration::from_micros(u64::from(self.last_rtt_micros)))
    }

    /// [`Self::last_rtt`] as kept: microseconds, `u32::MAX` before the first
    /// valid reply (the compact form a published status copies).
    pub(crate) fn last_rtt_micros(&self) -> u32 {
        self.last_rtt_micros
    }

    /// The identity that answers instead of the registered one, while
    /// replies come from another identity (made safe to show).
    pub fn answers_as(&self) -> Option<&str> {
        self.remarks.as_ref().and_then(|r| r.answers_as.as_deref())
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

    /// A peer and the calls a driver makes, each returning the changes.
    struct Peer(PeerLiveness);

    impl Peer {
        /// Rate 100 ms, timeout `timeout_ms`, `max_missed` misses.
        fn new(timeout_ms: u64, max_missed: u32, epoch: Option<u64>) -> Self {
            let cfg = DetectorConfig::new(ms(100), Some(ms(timeout_ms)), Some(max_missed)).unwrap();
            Self(PeerLiveness::new(cfg, epoch))
        }

        fn send(&mut self, at: Instant) -> u64 {
            let seq = self.0.on_send(at, &mut Vec::new());
            assert!(self.0.mark_sent(seq, Path::Datagram, false));
            seq
        }

        fn reply_as(&mut self, seq: u64, at: Instant, r: Reply<'_>) -> (ReplyVerdict, Vec<Change>) {
            let mut out = Vec::new();
            let v = self.0.on_reply(seq, Path::Datagram, at, ID, r, &mut out);
            (v, out)
        }

        fn reply(&mut self, seq: u64, at: Instant, epoch: u64) -> Vec<Change> {
            self.reply_as(seq, at, reply(epoch)).1
        }

        fn expire(&mut self, seq: u64, at: Instant) -> Vec<Change> {
            let mut out = Vec::new();
            self.0.on_expired(seq, at, &mut out);
            out
        }
    }

    fn peer() -> Peer {
        Peer::new(100, 3, None)
    }

    /// A peer that answered once at `t0` with indirect rounds on, then went
    /// silent for `max_missed` (3) heartbeats: returns the round opened.
    fn suspected(t0: Instant) -> (Peer, u64, Instant) {
        let mut p = peer();
        p.0.set_indirect(true);
        let s = p.send(t0);
        assert_eq!(p.reply(s, t0 + ms(1), 1), vec![Change::Up]);
        let mut opened = None;
        for i in 1..=3u64 {
            let at = t0 + ms(100 * i);
            let s = p.send(at);
            for c in p.expire(s, at + ms(100)) {
                match c {
                    Change::Suspect { seq, until } => opened = Some((seq, until)),
                    other => panic!("only a round may open, got {other:?}"),
                }
            }
        }
        let (seq, until) = opened.expect("the third miss opens a round");
        assert_eq!(
            p.0.state(),
            PeerState::Alive,
            "no verdict while the round is open"
        );
        (p, seq, until)
    }

    fn indirect(p: &mut Peer, seq: u64, at: Instant, r: Reply<'_>) -> (ReplyVerdict, Vec<Change>) {
        let mut out = Vec::new();
        let v =
            p.0.on_indirect_reply(seq, Arrival::at(at), ID, r, "helper-c", &mut out);
        (v, out)
    }

    #[test]
    fn with_indirect_rounds_the_convicting_miss_opens_a_round_instead() {
        let t0 = Instant::now();
        let (p, _, until) = suspected(t0);
        // Opened when the third miss was counted, for one timeout.
        assert_eq!(until, t0 + ms(300) + ms(100) + ms(100));
        assert!(!p.0.reached_indirectly());
    }

    #[test]
    fn an_indirect_answer_keeps_the_peer_alive_and_says_through_whom() {
        let t0 = Instant::now();
        let (mut p, round, _) = suspected(t0);
        let (v, changes) = indirect(&mut p, round, t0 + ms(450), reply(1));
        assert_eq!(v, ReplyVerdict::Accepted);
        assert_eq!(
            changes,
            vec![Change::ReachedIndirectly {
                via: Some("helper-c".into())
            }]
        );
        assert_eq!(p.0.state(), PeerState::Alive);
        assert!(p.0.reached_indirectly());
        assert_eq!(p.0.reached_via().collect::<Vec<_>>(), ["helper-c"]);
        assert_eq!(p.0.missed(), 0, "the round counts as a valid reply");
        // The monitor's own path did not answer: its RTT and count stay.
        assert_eq!(p.0.heartbeats_acked(), 1);
        // A direct reply ends it, silently.
        let s = p.send(t0 + ms(500));
        assert_eq!(p.reply(s, t0 + ms(501), 1), vec![]);
        assert!(!p.0.reached_indirectly());
        assert_eq!(p.0.reached_via().count(), 0);
    }

    #[test]
    fn a_round_without_an_answer_convicts_at_its_timeout() {
        let t0 = Instant::now();
        let (mut p, round, until) = suspected(t0);
        // Misses counted while it is open do not convict early...
        let s = p.send(t0 + ms(400));
        assert_eq!(p.expire(s, t0 + ms(450)), vec![]);
        assert_eq!(p.0.state(), PeerState::Alive);
        // ...its timeout does.
        assert_eq!(p.expire(round, until), vec![Change::Down]);
        assert_eq!(p.0.state(), PeerState::Unreachable);
    }

    #[test]
    fn a_round_with_no_helper_to_ask_convicts_at_once() {
        let t0 = Instant::now();
        let (mut p, round, _) = suspected(t0);
        let mut out = Vec::new();
        p.0.on_path_failed(round, Path::Indirect, t0 + ms(401), &mut out);
        assert_eq!(out, vec![Change::Down]);
    }

    #[test]
    fn a_helper_reporting_another_identity_or_an_old_epoch_settles_nothing() {
        let t0 = Instant::now();
        let (mut p, round, until) = suspected(t0);
        let other = Reply {
            responder_id: "impostor",
            responder_epoch: 1,
        };
        assert_eq!(
            indirect(&mut p, round, t0 + ms(420), other).0,
            ReplyVerdict::WrongIdentity
        );
        assert_eq!(
            indirect(&mut p, round, t0 + ms(430), reply(0)).0,
            ReplyVerdict::StaleEpoch
        );
        // Still open: a later right answer counts.
        assert_eq!(
            indirect(&mut p, round, t0 + ms(440), reply(1)).0,
            ReplyVerdict::Accepted
        );
        assert!(p.expire(round, until).is_empty());
    }

    #[test]
    fn a_late_indirect_answer_convicts_and_a_direct_reply_in_time_spares() {
        let t0 = Instant::now();
        let (mut p, round, until) = suspected(t0);
        let (v, changes) = indirect(&mut p, round, until + ms(1), reply(1));
        assert_eq!((v, changes), (ReplyVerdict::Late, vec![Change::Down]));

        let (mut p, round, until) = suspected(t0);
        let s = p.send(t0 + ms(400));
        assert_eq!(p.reply(s, t0 + ms(410), 1), vec![]);
        assert_eq!(p.expire(round, until), vec![], "the peer answered itself");
        assert_eq!(p.0.state(), PeerState::Alive);
    }

    #[test]
    fn an_indirect_answer_is_only_taken_for_a_round() {
        let t0 = Instant::now();
        let mut p = peer();
        p.0.set_indirect(true);
        let s = p.send(t0);
        assert_eq!(
            indirect(&mut p, s, t0 + ms(1), reply(1)).0,
            ReplyVerdict::WrongPath
        );
    }

    #[test]
    fn a_reply_read_late_by_a_lagging_monitor_is_judged_when_it_may_have_come() {
        let t0 = Instant::now();
        let mut p = Peer::new(100, 1, None);
        let mut out = Vec::new();
        // Sent at 0, read at 250 ms, but the monitor had not looked since
        // 50 ms: the reply may have come within its 100 ms timeout.
        let seq = p.send(t0);
        let lagging = Arrival {
            after: t0 + ms(50),
            read: t0 + ms(250),
        };
        let v =
            p.0.on_reply_in(seq, Path::Datagram, lagging, ID, reply(1), &mut out);
        assert_eq!(v, ReplyVerdict::Accepted);
        assert_eq!(out, vec![Change::Up]);
        assert_eq!(
            p.0.last_rtt(),
            Some(ms(250)),
            "the RTT is measured to the read"
        );
        // Had it looked at 150 ms and found nothing, the reply came later
        // than its timeout.
        let seq = p.send(t0 + ms(300));
        let looked = Arrival {
            after: t0 + ms(450),
            read: t0 + ms(460),
        };
        out.clear();
        let v =
            p.0.on_reply_in(seq, Path::Datagram, looked, ID, reply(1), &mut out);
        assert_eq!(v, ReplyVerdict::Late);
        assert_eq!(out, vec![Change::Down]);
    }

    #[test]
    fn a_voided_heartbeat_is_neither_answered_nor_missed() {
        let t0 = Instant::now();
        let mut p = Peer::new(100, 1, None);
        let seq = p.send(t0);
        assert!(p.0.void(seq));
        assert!(!p.0.void(seq), "voided once");
        assert!(p.expire(seq, t0 + ms(200)).is_empty(), "no miss");
        assert_eq!(p.0.state(), PeerState::Unknown);
        assert_eq!(
            p.reply_as(seq, t0 + ms(10), reply(1)).0,
            ReplyVerdict::NotInFlight
        );
        assert_eq!(p.0.heartbeats_acked(), 0);
    }

    #[test]
    fn with_hysteresis_an_unreachable_peer_comes_back_after_rise_replies_in_a_row() {
        let t0 = Instant::now();
        let cfg = DetectorConfig::new(ms(100), None, Some(1))
            .unwrap()
            .with_rise(3)
            .unwrap();
        let mut p = Peer(PeerLiveness::new(cfg, None));
        // The first reply ever makes it alive at once: rise is about coming
        // back, not about being seen.
        let s = p.send(t0);
        assert_eq!(p.reply(s, t0 + ms(1), 1), vec![Change::Up]);
        let s = p.send(t0 + ms(100));
        assert_eq!(p.expire(s, t0 + ms(200)), vec![Change::Down]);
        // Two good replies, a miss, then three good ones: up at the third.
        let mut t = t0 + ms(200);
        let mut ups = Vec::new();
        for answered in [true, true, false, true, true, true] {
            let s = p.send(t);
            let changes = if answered {
                p.reply(s, t + ms(1), 1)
            } else {
                p.expire(s, t + ms(100))
            };
            ups.push(changes.contains(&Change::Up));
            t += ms(100);
        }
        assert_eq!(ups, [false, false, false, false, false, true]);
        assert_eq!(p.0.state(), PeerState::Alive);
    }

    #[test]
    fn first_valid_reply_makes_the_peer_alive_and_learns_its_epoch() {
        let t0 = Instant::now();
        let mut p = peer();
        assert_eq!(p.0.state(), PeerState::Unknown);
        let seq = p.send(t0);
        assert_eq!(p.reply(seq, t0 + ms(3), 7), vec![Change::Up]);
        assert_eq!(p.0.state(), PeerState::Alive);
        assert_eq!(p.0.epoch(), Some(7));
        assert_eq!(p.0.last_rtt(), Some(ms(3)));
        assert_eq!((p.0.heartbeats_sent(), p.0.heartbeats_acked()), (1, 1));
    }

    #[test]
    fn max_missed_consecutive_misses_make_the_peer_unreachable_exactly_once() {
        let t0 = Instant::now();
        let mut p = peer();
        let s = p.send(t0);
        p.reply(s, t0 + ms(1), 1);
        // Three heartbeats at 100, 200, 300 ms; each expires 100 ms later.
        let s1 = p.send(t0 + ms(100));
        let s2 = p.send(t0 + ms(200));
        assert!(p.expire(s1, t0 + ms(200)).is_empty());
        let s3 = p.send(t0 + ms(300));
        assert!(p.expire(s2, t0 + ms(300)).is_empty());
        assert_eq!(p.0.state(), PeerState::Alive);
        assert_eq!(p.0.missed(), 2);
        // The third miss lands at 400 ms = 3 x 100 + 100 after the last reply.
        assert_eq!(p.expire(s3, t0 + ms(400)), vec![Change::Down]);
        assert_eq!(p.0.state(), PeerState::Unreachable);
        let s4 = p.send(t0 + ms(400));
        assert!(p.expire(s4, t0 + ms(500)).is_empty(), "reported once");
        assert_eq!(p.0.missed(), 4);
    }

    #[test]
    fn a_heartbeat_counts_once_whichever_path_answers_first() {
        let t0 = Instant::now();
        let mut p = peer();
        let s1 = p.send(t0);
        assert!(p.0.mark_sent(s1, Path::Grpc, false));
        assert_eq!(p.reply(s1, t0 + ms(2), 1), vec![Change::Up]);
        // The same heartbeat answered again (the other path, a duplicated
        // datagram) and then timing out: no effect.
        let (v, changes) = p.reply_as(s1, t0 + ms(3), reply(1));
        assert_eq!((v, changes), (ReplyVerdict::NotInFlight, vec![]));
        let mut out = Vec::new();
        assert_eq!(
            p.0.on_reply(s1, Path::Grpc, t0 + ms(4), ID, reply(1), &mut out),
            ReplyVerdict::NotInFlight
        );
        assert!(p.expire(s1, t0 + ms(100)).is_empty());
        assert_eq!((p.0.heartbeats_acked(), p.0.missed()), (1, 0));
        // A timeout first, then a (timely) answer: one miss.
        let s2 = p.send(t0 + ms(100));
        assert!(p.expire(s2, t0 + ms(150)).is_empty());
        assert_eq!(
            p.reply_as(s2, t0 + ms(160), reply(1)).0,
            ReplyVerdict::NotInFlight
        );
        assert_eq!((p.0.heartbeats_acked(), p.0.missed()), (1, 1));
    }

    #[test]
    fn a_reply_on_a_path_the_heartbeat_did_not_take_is_ignored() {
        let t0 = Instant::now();
        let mut p = peer();
        let s = p.send(t0);
        let mut out = Vec::new();
        let v =
            p.0.on_reply(s, Path::Grpc, t0 + ms(1), ID, reply(1), &mut out);
        assert_eq!((v, out.is_empty()), (ReplyVerdict::WrongPath, true));
        assert!(p.0.is_in_flight(s), "still waiting for its real answer");
        assert_eq!(p.reply(s, t0 + ms(2), 1), vec![Change::Up]);
    }

    #[test]
    fn a_trial_heartbeat_is_neither_a_reply_nor_a_miss_when_silent() {
        let t0 = Instant::now();
        let mut p = Peer::new(100, 1, None);
        let s1 = p.0.on_send(t0, &mut Vec::new());
        p.0.mark_sent(s1, Path::Datagram, true);
        let mut out = Vec::new();
        assert_eq!(
            p.0.on_expired(s1, t0 + ms(100), &mut out),
            Some((Paths::only(Path::Datagram), false))
        );
        assert!(out.is_empty());
        assert_eq!((p.0.state(), p.0.missed()), (PeerState::Unknown, 0));
        let s2 = p.send(t0 + ms(100));
        assert_eq!(p.expire(s2, t0 + ms(200)), vec![Change::Down]);
    }

    #[test]
    fn a_heartbeat_whose_every_path_failed_is_a_miss_at_once() {
        let t0 = Instant::now();
        let mut p = Peer::new(100, 1, None);
        let s = p.send(t0);
        p.0.mark_sent(s, Path::Grpc, false);
        let mut out = Vec::new();
        p.0.on_path_failed(s, Path::Grpc, t0 + ms(1), &mut out);
        assert!(out.is_empty(), "the datagram may still be answered");
        p.0.on_path_failed(s, Path::Datagram, t0 + ms(2), &mut out);
        assert_eq!(out, vec![Change::Down]);
        assert!(p.expire(s, t0 + ms(100)).is_empty(), "settled once");
    }

    #[test]
    fn outcomes_of_heartbeats_never_sent_are_ignored() {
        let t0 = Instant::now();
        let mut p = Peer::new(100, 1, None);
        assert!(p.expire(0, t0).is_empty());
        assert!(p.expire(1, t0).is_empty());
        for seq in [0, 1, 5, u64::MAX] {
            assert_eq!(p.reply_as(seq, t0, reply(1)).0, ReplyVerdict::NotInFlight);
        }
        assert_eq!(p.0.state(), PeerState::Unknown);
    }

    #[test]
    fn a_reply_after_the_timeout_does_not_count() {
        let t0 = Instant::now();
        let mut p = peer();
        let s = p.send(t0);
        let (v, changes) = p.reply_as(s, t0 + ms(101), reply(1));
        assert_eq!((v, changes), (ReplyVerdict::Late, vec![]));
        assert_eq!(p.0.state(), PeerState::Unknown);
        assert_eq!(p.0.missed(), 1);
        assert_eq!(p.0.heartbeats_acked(), 0);
        // Exactly at the timeout still counts.
        let s = p.send(t0 + ms(100));
        assert_eq!(p.reply(s, t0 + ms(200), 1), vec![Change::Up]);
    }

    #[test]
    fn a_valid_reply_resets_the_miss_count() {
        let t0 = Instant::now();
        let mut p = peer();
        for i in 0..2 {
            let s = p.send(t0 + ms(100 * i));
            p.expire(s, t0 + ms(100 * i + 100));
        }
        assert_eq!(p.0.missed(), 2);
        let s = p.send(t0 + ms(200));
        p.reply(s, t0 + ms(250), 1);
        assert_eq!(p.0.missed(), 0);
        for i in 3..5 {
            let s = p.send(t0 + ms(100 * i));
            p.expire(s, t0 + ms(100 * i + 100));
        }
        assert_eq!(p.0.state(), PeerState::Alive, "two misses after a reset");
    }

    #[test]
    fn an_unreachable_peer_that_answers_is_alive_again() {
        let t0 = Instant::now();
        let mut p = peer();
        for i in 0..3 {
            let s = p.send(t0 + ms(100 * i));
            p.expire(s, t0 + ms(100 * i + 100));
        }
        assert_eq!(p.0.state(), PeerState::Unreachable, "never answered");
        let s = p.send(t0 + ms(300));
        assert_eq!(p.reply(s, t0 + ms(301), 4), vec![Change::Up]);
    }

    #[test]
    fn a_higher_epoch_is_a_restart() {
        let t0 = Instant::now();
        let mut p = peer();
        let s = p.send(t0);
        p.reply(s, t0, 2);
        let s = p.send(t0 + ms(100));
        assert_eq!(
            p.reply(s, t0 + ms(101), 3),
            vec![Change::Restarted {
                previous: 2,
                current: 3
            }]
        );
        assert_eq!(p.0.epoch(), Some(3));
    }

    #[test]
    fn a_restart_seen_after_an_outage_reports_restart_then_up() {
        let t0 = Instant::now();
        let mut p = Peer::new(100, 1, Some(5));
        let s = p.send(t0);
        assert_eq!(p.expire(s, t0 + ms(100)), vec![Change::Down]);
        let s = p.send(t0 + ms(100));
        assert_eq!(
            p.reply(s, t0 + ms(110), 6),
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
        let s = p.send(t0);
        p.reply(s, t0, 9);
        let s = p.send(t0 + ms(100));
        assert_eq!(
            p.reply_as(s, t0 + ms(101), reply(8)),
            (ReplyVerdict::StaleEpoch, vec![])
        );
        assert_eq!(p.0.epoch(), Some(9));
        assert_eq!(p.0.heartbeats_acked(), 1);
        assert_eq!(p.0.missed(), 1, "a stale reply is not an acknowledgement");
    }

    #[test]
    fn a_reply_from_another_identity_is_a_mismatch_not_an_ack() {
        let t0 = Instant::now();
        let mut p = peer();
        let other = Reply {
            responder_id: "intruder",
            responder_epoch: 1,
        };
        let s = p.send(t0);
        assert_eq!(
            p.reply_as(s, t0 + ms(1), other),
            (
                ReplyVerdict::WrongIdentity,
                vec![Change::IdentityMismatch {
                    observed: "intruder".into()
                }]
            )
        );
        assert_eq!(p.0.state(), PeerState::Unknown);
        assert_eq!(p.0.heartbeats_acked(), 0);
        let s = p.send(t0 + ms(100));
        assert!(
            p.reply_as(s, t0 + ms(101), other).1.is_empty(),
            "reported once per run"
        );
        let s = p.send(t0 + ms(200));
        assert_eq!(
            p.reply_as(s, t0 + ms(201), other).1,
            vec![Change::Down],
            "three mismatches are three misses"
        );
    }

    #[test]
    fn the_status_says_whom_the_peer_answers_as_until_it_answers_as_itself() {
        let t0 = Instant::now();
        let mut p = peer();
        let as_other = |id| Reply {
            responder_id: id,
            responder_epoch: 1,
        };
        assert_eq!(p.0.answers_as(), None);
        let s = p.send(t0);
        p.reply_as(s, t0 + ms(1), as_other("db-3"));
        assert_eq!(p.0.answers_as(), Some("db-3"));
        let s = p.send(t0 + ms(100));
        let (_, changes) = p.reply_as(s, t0 + ms(101), as_other("db-4"));
        assert!(changes.is_empty(), "one report per run");
        assert_eq!(p.0.answers_as(), Some("db-4"), "the latest impostor");
        let s = p.send(t0 + ms(200));
        p.reply(s, t0 + ms(201), 1);
        assert_eq!(p.0.answers_as(), None);
        assert_eq!(p.0.state(), PeerState::Alive);
    }

    #[test]
    fn an_identity_that_steers_a_terminal_is_kept_and_reported_escaped() {
        let t0 = Instant::now();
        let mut p = peer();
        let s = p.send(t0);
        let hostile = Reply {
            responder_id: "x\u{1b}[2J\u{1b}]0;owned\u{7}",
            responder_epoch: 1,
        };
        let (_, changes) = p.reply_as(s, t0 + ms(1), hostile);
        let shown = "x\\u{1b}[2J\\u{1b}]0;owned\\u{7}";
        assert_eq!(
            changes,
            vec![Change::IdentityMismatch {
                observed: shown.into()
            }]
        );
        assert_eq!(p.0.answers_as(), Some(shown));
    }

    #[test]
    fn a_miss_older_than_the_last_ack_is_not_consecutive() {
        let t0 = Instant::now();
        let mut p = Peer::new(250, 3, None);
        let s1 = p.send(t0);
        let s2 = p.send(t0 + ms(100));
        p.reply(s2, t0 + ms(120), 1);
        assert!(p.expire(s1, t0 + ms(250)).is_empty());
        assert_eq!(p.0.missed(), 0);
    }

    #[test]
    fn the_rtt_is_the_cores_own_measure_whatever_the_reply_says() {
        let t0 = Instant::now();
        let mut p = peer();
        p.send(t0);
        let s = p.send(t0 + ms(40));
        p.reply(s, t0 + ms(47), 1);
        assert_eq!(p.0.last_rtt(), Some(ms(7)));
    }

    #[test]
    fn a_displaced_heartbeat_is_a_miss_once() {
        let t0 = Instant::now();
        let mut p = Peer::new(700, 1000, None);
        let first = p.send(t0);
        for i in 1..=crate::probe::PROBE_WINDOW as u64 {
            p.send(t0 + ms(i));
        }
        assert!(!p.0.is_in_flight(first));
        assert_eq!(p.0.missed(), 1);
        assert!(p.expire(first, t0 + ms(700)).is_empty());
        assert_eq!(p.0.missed(), 1);
        assert_eq!(p.0.in_flight(), crate::probe::PROBE_WINDOW);
    }

    #[test]
    fn reconfiguring_drops_evidence_and_flights_but_keeps_state_and_epoch() {
        let t0 = Instant::now();
        let mut p = peer();
        let s = p.send(t0);
        p.reply(s, t0, 3);
        let s = p.send(t0 + ms(100));
        p.expire(s, t0 + ms(200));
        let in_flight = p.send(t0 + ms(200));
        let cfg = DetectorConfig::new(ms(50), None, Some(5)).unwrap();
        p.0.reconfigure(cfg, MissCountDetector::new(cfg.max_missed));
        assert_eq!(p.0.missed(), 0);
        assert_eq!(p.0.state(), PeerState::Alive);
        assert_eq!(p.0.epoch(), Some(3));
        assert_eq!(p.0.timeout(), cfg.timeout);
        assert_eq!(
            p.reply_as(in_flight, t0 + ms(201), reply(3)).0,
            ReplyVerdict::NotInFlight
        );
    }
}
