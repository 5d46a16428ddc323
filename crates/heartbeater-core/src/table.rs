//! Every monitored peer, and the one schedule that says whose heartbeat is due
//! and whose heartbeat has waited long enough.
//!
//! The table is the node's sans-IO heart. A driver asks it when to wake up
//! ([`PeerTable::next_deadline`]), gives up the heartbeats whose timeout
//! passed ([`PeerTable::poll_expired`]), collects the heartbeats due
//! ([`PeerTable::poll_due`]), sends them however it likes, says on which
//! path each went ([`PeerTable::mark_sent`]), and hands back what comes in
//! ([`PeerTable::on_reply`], [`PeerTable::on_path_failed`]). The table keeps
//! every heartbeat in flight itself, so a reply is believed only if it names
//! one of them, and times are measured with the table's clock. Events pile
//! up until the driver drains them. Two binary heaps hold all the timers, so
//! 100,000 peers cost heap entries, not tasks.
//!
//! Ticks never catch up: a driver that wakes late (a stalled process, a busy
//! machine) sends one heartbeat per due peer and resumes the normal cadence
//! from there, rather than a burst of the heartbeats it missed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::awareness::Awareness;
use crate::config::{DetectorConfig, PeerSpec};
use crate::detector::{Configured, DetectorFactory};
use crate::liveness::{Arrival, Change, PeerLiveness, PeerState, Remarks, Reply, ReplyVerdict};
use crate::pages::Pages;
use crate::probe::micros;
pub use crate::probe::{Path, Paths, PeerKey, ProbeId};
use crate::rate::HeartbeatRate;

/// A heartbeat to send now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Names the heartbeat; hand it back with everything about it.
    pub id: ProbeId,
    /// When the heartbeat was due; `sent_at - due` is the scheduler's lateness.
    pub due: Instant,
    /// When it is sent (the `now` of the poll).
    pub sent_at: Instant,
}

/// A heartbeat whose timeout passed without an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// The heartbeat.
    pub id: ProbeId,
    /// The paths it was sent on, none of which answered in time.
    pub paths: Paths,
    /// Whether its silence counted as a miss (a trial does not).
    pub counted: bool,
}

/// Kinds of liveness event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The peer was registered, or its registration changed.
    Registered,
    /// The peer became `Alive`.
    PeerUp,
    /// The peer became `Unreachable`.
    PeerDown,
    /// The peer answered with a higher epoch than last seen.
    Restarted {
        /// The epoch seen before.
        previous: u64,
    },
    /// Something answered for the peer with another identity.
    IdentityMismatch {
        /// The identity that answered, escaped when it was not printable
        /// ([`crate::identity::shown_identity`]).
        observed: String,
    },
    /// The peer was deregistered.
    Deregistered,
    /// The peer answered only through other nodes (an indirect probe
    /// round): alive, with the path between this node and it failing.
    ReachedIndirectly {
        /// The helper that carried the answer, when known.
        via: Option<String>,
    },
}

/// One event about one peer, with the peer's state and epoch after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivenessEvent {
    /// The peer concerned.
    pub peer_id: Arc<str>,
    /// What happened.
    pub kind: EventKind,
    /// The peer's state after the event.
    pub state: PeerState,
    /// The peer's epoch after the event, when known.
    pub epoch: Option<u64>,
}

/// A snapshot of what the table knows about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer's registered identity.
    pub peer_id: String,
    /// Host as registered.
    pub host: String,
    /// Port as registered.
    pub port: u16,
    /// Current liveness.
    pub state: PeerState,
    /// Last epoch seen, if any.
    pub epoch: Option<u64>,
    /// Heartbeats sent since this node started monitoring the peer.
    pub heartbeats_sent: u64,
    /// Heartbeats validly acknowledged.
    pub heartbeats_acked: u64,
    /// Round-trip time of the last valid reply.
    pub last_rtt: Option<Duration>,
    /// Consecutive misses right now.
    pub missed: u32,
    /// The timing the peer is judged by.
    pub detector: DetectorConfig,
    /// While replies at the peer's address carry another identity: the
    /// last one seen, escaped when it was not printable. Why a peer stays
    /// `UNKNOWN` or `UNREACHABLE` although something answers.
    pub answers_as: Option<String>,
    /// Whether the last valid reply came only through other nodes (an
    /// indirect probe round): the peer is alive, and the path between this
    /// node and it is what fails.
    pub reached_indirectly: bool,
    /// While reached only indirectly: the helpers whose answers kept the
    /// peer alive, the latest first.
    pub reached_via: Vec<String>,
}

/// How many peers are in each state: what a health check or a gauge needs,
/// at the cost of a pass over the table instead of a copy of every status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// Registered, no valid reply yet.
    pub unknown: usize,
    /// Answering validly.
    pub alive: usize,
    /// Declared unreachable.
    pub unreachable: usize,
}

impl StateCounts {
    /// Every registered peer.
    pub fn total(&self) -> usize {
        self.unknown + self.alive + self.unreachable
    }
}

/// What [`PeerTable::upsert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// A new peer.
    Inserted(PeerKey),
    /// A known peer whose address or timing changed.
    Updated(PeerKey),
    /// A known peer registered again with the same values: nothing changed.
    Unchanged(PeerKey),
}

impl Upsert {
    /// The key of the registration now in force.
    pub fn key(self) -> PeerKey {
        match self {
            Upsert::Inserted(k) | Upsert::Updated(k) | Upsert::Unchanged(k) => k,
        }
    }
}

struct Slot<D> {
    /// Shared with the published view ([`PublishedStatus`]), which then
    /// holds no copy of the registration.
    spec: Arc<PeerSpec>,
    liveness: PeerLiveness<D>,
    generation: u32,
    /// Whether this peer is counted in [`PeerTable`]'s `alive`.
    counted_alive: bool,
    /// When the next heartbeat is due, in microseconds after the table's
    /// base: 8 bytes where an `Instant` takes 16, and the same again in the
    /// timer heap.
    next_due: u64,
}

/// When a heartbeat in flight times out, packed into 24 bytes (an `Instant`
/// and a probe id take 40): a node holds one or two per peer, for 10,000
/// peers or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Expiry {
    /// Microseconds after the table's base, rounded up so that a heartbeat
    /// is never given up before its timeout; first, so the heap orders by it.
    at_micros: u64,
    key: u64,
    seq: u64,
}

/// All monitored peers and their schedule, each judged by a detector from
/// `F` (by default, each by the rule its registration names: [`Configured`]).
pub struct PeerTable<F: DetectorFactory = Configured> {
    detectors: F,
    slots: Pages<Slot<F::Detector>>,
    free: Vec<u32>,
    generations: Vec<u32>,
    /// Slot numbers by peer id: the id lives once, in the slot's
    /// registration, and the index holds 4 bytes per peer (a map keyed by
    /// the id held 24). Hashed with a random key, so that ids chosen by a
    /// client cannot be made to collide.
    index: HashTable<u32>,
    hasher: RandomState,
    /// Each peer's next heartbeat: its due time (as in `Slot::next_due`)
    /// and its slot. An entry is current while the slot is still due then;
    /// an entry left by an earlier registration of a reused slot that
    /// happens to name the same time fires that registration's own
    /// heartbeat, on time.
    timers: BinaryHeap<Reverse<(u64, u32)>>,
    /// Set at the first call that tells the time; timers and expiries are
    /// kept relative to it.
    base: Option<Instant>,
    expiries: BinaryHeap<Reverse<Expiry>>,
    events: Vec<LivenessEvent>,
    changes: Vec<Change>,
    /// How many peers have each heartbeat period: the shortest one sizes
    /// the pause guard.
    periods: BTreeMap<Duration, u32>,
    awareness: Awareness,
    /// Peers ALIVE right now: the ones whose silence can say something
    /// about the monitor itself (awareness).
    alive: usize,
    /// Slots whose status may have changed since [`PeerTable::take_changes`]
    /// last took them, each once, oldest first: what a published view of
    /// the statuses is kept up to date from, at a cost that follows the
    /// changes and not the size of the table.
    changed: std::collections::VecDeque<u32>,
    /// Per slot, whether it is in `changed`.
    queued: Vec<bool>,
    /// Ids deregistered since [`PeerTable::take_changes`] last ran.
    removed: Vec<Arc<str>>,
    /// Whether peers about to be convicted get an indirect probe round.
    indirect: bool,
    /// Indirect rounds opened since [`PeerTable::take_suspects`] last ran:
    /// the driver asks helpers for each.
    suspects: Vec<ProbeId>,
}

/// A change to a peer's published status (see [`PeerTable::take_changes`]).
#[derive(Debug, Clone, PartialEq)]
pub enum StatusChange {
    /// The peer's status now (new, or changed).
    Upsert(PublishedStatus),
    /// The peer was deregistered.
    Removed(Arc<str>),
}

/// A peer's status as a view of the table keeps it: the registration
/// shared with the table (no copy of the id, the host or the timing), and
/// what changes with each heartbeat, packed into 64 bytes (a view holds one
/// per peer, a million of them on a large node). [`PublishedStatus::to_status`]
/// makes the [`PeerStatus`] a reader gets.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedStatus {
    spec: Arc<PeerSpec>,
    /// Whom replies at the peer's address come from instead, through whom
    /// it is reached (see [`PeerStatus::answers_as`] and
    /// [`PeerStatus::reached_via`]); `None` for the common case.
    remarks: Option<Box<Remarks>>,
    /// Last epoch seen, when `has_epoch`.
    epoch: u64,
    heartbeats_sent: u64,
    heartbeats_acked: u64,
    /// As [`PeerLiveness`] keeps it: microseconds, `u32::MAX` for none.
    rtt_micros: u32,
    missed: u32,
    /// The table's slot of the peer, for views kept by slot.
    slot: u32,
    state: PeerState,
    has_epoch: bool,
    reached_indirectly: bool,
}

impl PublishedStatus {
    /// A small dense number for the peer, unique among the peers
    /// registered at once and reused after a removal ([`PeerKey::index`]):
    /// a view can keep statuses in a vector by it.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The peer's id.
    pub fn peer_id(&self) -> &Arc<str> {
        &self.spec.peer_id
    }

    /// The registration, as the table holds it.
    pub fn spec(&self) -> &Arc<PeerSpec> {
        &self.spec
    }

    /// Current liveness.
    pub fn state(&self) -> PeerState {
        self.state
    }

    /// The status as readers get it.
    pub fn to_status(&self) -> PeerStatus {
        PeerStatus {
            peer_id: self.spec.peer_id.to_string(),
            host: self.spec.host.clone(),
            port: self.spec.port,
            state: self.state,
            epoch: self.has_epoch.then_some(self.epoch),
            heartbeats_sent: self.heartbeats_sent,
            heartbeats_acked: self.heartbeats_acked,
            last_rtt: (self.rtt_micros != u32::MAX)
                .then(|| Duration::from_micros(u64::from(self.rtt_micros))),
            missed: self.missed,
            detector: self.spec.detector,
            answers_as: self
                .remarks
                .as_ref()
                .and_then(|r| r.answers_as.as_deref())
                .map(str::to_owned),
            reached_indirectly: self.reached_indirectly,
            reached_via: self
                .remarks
                .iter()
                .flat_map(|r| r.reached_via.iter().map(|v| v.to_string()))
                .collect(),
        }
    }
}

impl<F: DetectorFactory> std::fmt::Debug for PeerTable<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTable")
            .field("peers", &self.len())
            .field("expiries", &self.expiries.len())
            .finish_non_exhaustive()
    }
}

impl Default for PeerTable<Configured> {
    fn default() -> Self {
        Self::with_detectors(Configured)
    }
}

impl PeerTable<Configured> {
    /// An empty table judging each peer by the rule its registration names.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<F: DetectorFactory> PeerTable<F> {
    /// An empty table whose peers are judged by detectors from `detectors`.
    pub fn with_detectors(detectors: F) -> Self {
        Self {
            detectors,
            slots: Pages::new(),
            free: Vec::new(),
            generations: Vec::new(),
            index: HashTable::new(),
            hasher: RandomState::new(),
            timers: BinaryHeap::new(),
            base: None,
            expiries: BinaryHeap::new(),
            events: Vec::new(),
            changes: Vec::new(),
            periods: BTreeMap::new(),
            awareness: Awareness::default(),
            alive: 0,
            changed: std::collections::VecDeque::new(),
            queued: Vec::new(),
            removed: Vec::new(),
            indirect: false,
            suspects: Vec::new(),
        }
    }

    /// Turns indirect probe rounds on or off for every peer, present and
    /// future: with them on, a peer about to be convicted is first probed
    /// through other nodes ([`PeerTable::take_suspects`]). A driver turns
    /// them on only where the answers can be authenticated.
    pub fn set_indirect(&mut self, on: bool) {
        if self.indirect == on {
            return;
        }
        self.indirect = on;
        self.for_each_slot(|_, slot| slot.liveness.set_indirect(on));
    }

    /// Whether indirect probe rounds are on.
    pub fn indirect(&self) -> bool {
        self.indirect
    }

    /// Appends to `out` the indirect rounds opened since the last call, each
    /// named as a heartbeat on [`Path::Indirect`]: the driver asks helpers
    /// to probe the peer and hands their answers to
    /// [`PeerTable::on_indirect_reply`], or, with no helper to ask, fails
    /// the round ([`PeerTable::on_path_failed`]), which convicts at once. A
    /// round left alone convicts at its timeout.
    pub fn take_suspects(&mut self, out: &mut Vec<ProbeId>) {
        out.append(&mut self.suspects);
    }

    /// Up to `k` peers, other than `except`, that can probe others on this
    /// node's behalf: ALIVE and reached directly. Chosen at random with
    /// `random(n)` (a number below `n`), looking at no more than
    /// `64 x k` slots, so the cost does not grow with the table; `accept`
    /// says whether the driver can reach a candidate (it has its address).
    pub fn pick_helpers(
        &self,
        except: PeerKey,
        k: usize,
        mut random: impl FnMut(usize) -> usize,
        mut accept: impl FnMut(PeerKey) -> bool,
        out: &mut Vec<PeerKey>,
    ) {
        let slots = self.generations.len();
        if slots == 0 || k == 0 {
            return;
        }
        let helpful = |n: usize| {
            let slot = self.slots.get(n)?;
            let key = PeerKey {
                slot: u32::try_from(n).ok()?,
                generation: slot.generation,
            };
            let fit = key != except
                && slot.liveness.state() == PeerState::Alive
                && !slot.liveness.reached_indirectly();
            fit.then_some(key)
        };
        let start = out.len();
        // A small table is walked whole from a random start; a large one
        // sampled, since its helpers are many.
        let tries = slots.min(64 * k);
        let walk = slots <= 64 * k;
        let first = random(slots);
        for i in 0..tries {
            let n = if walk {
                (first + i) % slots
            } else {
                random(slots)
            };
            if let Some(key) = helpful(n) {
                if !out[start..].contains(&key) && accept(key) {
                    out.push(key);
                    if out.len() - start >= k {
                        return;
                    }
                }
            }
        }
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no peer is registered.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Makes room for `additional` more peers at once: a node restoring a
    /// million peers would otherwise rehash its index some twenty times,
    /// each time reading every peer's id again (a cache miss apiece).
    pub fn reserve(&mut self, additional: usize) {
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.reserve(additional, |&n| {
            slots
                .get(n as usize)
                .map_or(0, |s| hasher.hash_one(&*s.spec.peer_id))
        });
        self.timers.reserve(additional);
        self.generations.reserve(additional);
        self.queued.reserve(additional);
    }

    /// Registers a peer, or updates its registration. Its first heartbeat is
    /// due at `now` when it is new or its registration changed.
    pub fn upsert(&mut self, spec: PeerSpec, now: Instant) -> Upsert {
        let existing = self.slot_of(&spec.peer_id);
        if let Some(slot_no) = existing {
            let unchanged = match self.slot_mut(slot_no) {
                Some(slot) => (*slot.spec == spec).then_some(slot.generation),
                None => None,
            };
            if let Some(generation) = unchanged {
                return Upsert::Unchanged(PeerKey {
                    slot: slot_no,
                    generation,
                });
            }
            let generation = self.bump_generation(slot_no);
            let due = self.micros_at(now);
            let detector = self.detectors.build(&spec.detector);
            let new_period = spec.detector.heartbeat_freq;
            let tolerance = self.awareness.tolerance();
            if let Some(slot) = self.slot_mut(slot_no) {
                let old_period = slot.spec.detector.heartbeat_freq;
                slot.liveness.reconfigure(spec.detector, detector);
                slot.liveness.set_tolerance(tolerance);
                slot.spec = Arc::new(spec);
                slot.generation = generation;
                slot.next_due = due;
                self.forget_period(old_period);
                self.count_period(new_period);
                self.push_event(slot_no, EventKind::Registered);
                self.timers.push(Reverse((due, slot_no)));
                self.compact_timers();
                return Upsert::Updated(PeerKey {
                    slot: slot_no,
                    generation,
                });
            }
        }
        let due = self.micros_at(now);
        let key = self.insert(spec, None, due);
        self.push_event(key.slot, EventKind::Registered);
        Upsert::Inserted(key)
    }

    /// Re-creates a peer from the registry after a restart of this node,
    /// remembering the epoch it had. No event: nothing changed for the peer.
    ///
    /// Its first heartbeat is due within one period of `now`, at an offset
    /// that depends on its id: a node restarting with 100,000 peers spreads
    /// their heartbeats over the period instead of sending them all at once.
    pub fn restore(&mut self, spec: PeerSpec, known_epoch: Option<u64>, now: Instant) -> PeerKey {
        if let Some(slot_no) = self.slot_of(&spec.peer_id) {
            self.remove_slot(slot_no);
        }
        let first =
            self.micros_at(now) + micros(phase(&spec.peer_id, spec.detector.heartbeat_freq));
        self.insert(spec, known_epoch, first)
    }

    /// `now` in microseconds after the base, which the first call sets.
    /// Rounded up: a heartbeat is never sent before the time asked.
    fn micros_at(&mut self, now: Instant) -> u64 {
        micros_after(*self.base.get_or_insert(now), now)
    }

    fn insert(&mut self, spec: PeerSpec, known_epoch: Option<u64>, due: u64) -> PeerKey {
        let slot_no = match self.free.pop() {
            Some(n) => n,
            None => {
                self.generations.push(0);
                u32::try_from(self.generations.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let generation = self.bump_generation(slot_no);
        let hash = self.hasher.hash_one(&*spec.peer_id);
        let detector = self.detectors.build(&spec.detector);
        self.count_period(spec.detector.heartbeat_freq);
        let mut liveness = PeerLiveness::with_detector(spec.detector, detector, known_epoch);
        liveness.set_tolerance(self.awareness.tolerance());
        liveness.set_indirect(self.indirect);
        self.slots.set(
            slot_no as usize,
            Slot {
                spec: Arc::new(spec),
                liveness,
                generation,
                counted_alive: false,
                next_due: due,
            },
        );
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hash, slot_no, |&n| {
            slots
                .get(n as usize)
                .map_or(0, |s| hasher.hash_one(&*s.spec.peer_id))
        });
        self.timers.push(Reverse((due, slot_no)));
        self.mark_changed(slot_no);
        PeerKey {
            slot: slot_no,
            generation,
        }
    }

    fn bump_generation(&mut self, slot_no: u32) -> u32 {
        match self.generations.get_mut(slot_no as usize) {
            Some(g) => {
                *g = g.wrapping_add(1);
                *g
            }
            None => 0,
        }
    }

    /// Deregisters a peer. Returns whether it was registered.
    pub fn remove(&mut self, peer_id: &str) -> bool {
        let Some(slot_no) = self.slot_of(peer_id) else {
            return false;
        };
        self.push_event(slot_no, EventKind::Deregistered);
        self.remove_slot(slot_no);
        true
    }

    /// Drops the timers of old registrations once they outnumber the live
    /// ones: each changed registration leaves its predecessor's timer in the
    /// heap until it falls due, up to an hour later, and a client updating
    /// one peer in a loop must not grow the heap without bound.
    fn compact_timers(&mut self) {
        if self.timers.len() <= 2 * self.index.len() + 64 {
            return;
        }
        let slots = &self.slots;
        let live: Vec<_> = self
            .index
            .iter()
            .filter_map(|&slot_no| {
                slots
                    .get(slot_no as usize)
                    .map(|slot| Reverse((slot.next_due, slot_no)))
            })
            .collect();
        self.timers = BinaryHeap::from(live);
    }

    /// Brings `alive` up to date with the state of `slot_no`.
    fn count_alive(&mut self, slot_no: u32) {
        if let Some(slot) = self.slots.get_mut(slot_no as usize) {
            let alive = slot.liveness.state() == PeerState::Alive;
            if alive != slot.counted_alive {
                slot.counted_alive = alive;
                if alive {
                    self.alive += 1;
                } else {
                    self.alive = self.alive.saturating_sub(1);
                }
            }
        }
    }

    fn remove_slot(&mut self, slot_no: u32) {
        if let Some(slot) = self.slots.take(slot_no as usize) {
            if slot.counted_alive {
                self.alive = self.alive.saturating_sub(1);
            }
            self.forget_period(slot.spec.detector.heartbeat_freq);
            let hash = self.hasher.hash_one(&*slot.spec.peer_id);
            if let Ok(entry) = self.index.find_entry(hash, |&n| n == slot_no) {
                entry.remove();
            }
            self.removed.push(slot.spec.peer_id.clone());
            self.bump_generation(slot_no);
            self.free.push(slot_no);
        }
    }

    fn count_period(&mut self, period: Duration) {
        *self.periods.entry(period).or_insert(0) += 1;
    }

    fn forget_period(&mut self, period: Duration) {
        if let Some(n) = self.periods.get_mut(&period) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.periods.remove(&period);
            }
        }
    }

    /// The monitor's local health score ([`crate::awareness`]): 0 when
    /// healthy, up to [`crate::awareness::MAX_AWARENESS`] while many peers
    /// go silent at once or the monitor was paused.
    pub fn awareness_score(&self) -> u8 {
        self.awareness.score()
    }

    fn apply_tolerance(&mut self) {
        let tolerance = self.awareness.tolerance();
        self.for_each_slot(|_, slot| slot.liveness.set_tolerance(tolerance));
    }

    /// The shortest heartbeat period of any peer; `None` without peers.
    pub fn shortest_period(&self) -> Option<Duration> {
        self.periods.keys().next().copied()
    }

    /// The heartbeats per second the table's peers ask for, together: what
    /// a node's heartbeat budget is checked against. Summed per distinct
    /// period, so its cost follows the few periods in use, not the peers.
    pub fn heartbeat_demand(&self) -> HeartbeatRate {
        self.periods
            .iter()
            .map(|(period, n)| HeartbeatRate::of_period(*period).times(*n))
            .sum()
    }

    /// The monitor was paused until `now` (the driver's [`crate::PauseGuard`]
    /// saw it): every heartbeat in flight is voided, neither answered nor
    /// missed, and each peer that had one is due a fresh heartbeat now, so
    /// that its verdict rests on what happens after the pause only. Returns
    /// how many heartbeats were voided.
    pub fn on_local_pause(&mut self, now: Instant) -> usize {
        let mut voided = 0;
        let mut fresh = Vec::new();
        let due = self.micros_at(now);
        self.for_each_slot(|slot_no, slot| {
            let n = slot.liveness.on_local_pause(now);
            if n > 0 {
                voided += n;
                slot.next_due = due;
                fresh.push(Reverse((due, slot_no)));
            }
        });
        self.timers.extend(fresh);
        voided
    }

    /// Runs `f` on every registered peer's slot.
    fn for_each_slot(&mut self, mut f: impl FnMut(u32, &mut Slot<F::Detector>)) {
        for &slot_no in &self.index {
            if let Some(slot) = self.slots.get_mut(slot_no as usize) {
                f(slot_no, slot);
            }
        }
    }

    /// When the driver must next call [`PeerTable::poll_expired`] and
    /// [`PeerTable::poll_due`]; `None` with nothing to do.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        let mut due = None;
        while let Some(Reverse((at, slot_no))) = self.timers.peek().copied() {
            if self.is_current(at, slot_no) {
                due = self.base.map(|base| at_of(base, at));
                break;
            }
            self.timers.pop();
        }
        let expiry = match (self.base, self.expiries.peek()) {
            (Some(base), Some(Reverse(e))) => Some(at_of(base, e.at_micros)),
            _ => None,
        };
        match (due, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn is_current(&self, due: u64, slot_no: u32) -> bool {
        matches!(self.slots.get(slot_no as usize), Some(s) if s.next_due == due)
    }

    /// Settles every heartbeat whose timeout passed by `now` as unanswered,
    /// and appends them to `out` (the driver may learn from which paths went
    /// silent). Call before [`PeerTable::poll_due`] at each wake-up.
    ///
    /// `now` is how far the driver has looked: every reply that arrived by
    /// then was read. A driver behind on its replies passes the last time it
    /// found none waiting, and the heartbeats whose timeout falls after it
    /// wait for the next call: silence the driver did not look at is not a
    /// miss.
    pub fn poll_expired(&mut self, now: Instant, out: &mut Vec<Expired>) {
        self.poll_expired_at_most(now, out, usize::MAX);
    }

    /// [`PeerTable::poll_expired`], settling at most `limit` heartbeats: the
    /// rest stay due (and [`PeerTable::next_deadline`] says so).
    pub fn poll_expired_at_most(&mut self, now: Instant, out: &mut Vec<Expired>, limit: usize) {
        self.poll_expired_doubting(now, out, limit, |_, _| false);
    }

    /// [`PeerTable::poll_expired_at_most`], voiding instead of settling
    /// every heartbeat whose silence is in doubt: `doubtful(sent, deadline)`
    /// says whether the driver may have lost its answer itself (its socket
    /// dropped replies between the two), and such a silence is neither a
    /// miss nor news about the peer's path. Returns how many were voided.
    pub fn poll_expired_doubting(
        &mut self,
        now: Instant,
        out: &mut Vec<Expired>,
        limit: usize,
        doubtful: impl Fn(Instant, Instant) -> bool,
    ) -> usize {
        let mut voided = 0;
        let Some(base) = self.base else {
            return voided;
        };
        let window = self.shortest_period().unwrap_or(Duration::from_secs(1));
        if self.awareness.tick(now, window) {
            self.apply_tolerance();
        }
        // Whole microseconds passed: an expiry at `at` (rounded up) is due
        // once `base + at` is reached, compared without making an Instant.
        let now_micros = micros(now.saturating_duration_since(base));
        let mut taken = 0usize;
        while let Some(&Reverse(e)) = self.expiries.peek() {
            if e.at_micros > now_micros || taken >= limit {
                break;
            }
            taken += 1;
            self.expiries.pop();
            let id = ProbeId {
                key: PeerKey::from_bits(e.key),
                seq: e.seq,
            };
            // Most heartbeats were answered before their timeout: nothing
            // to settle, and nothing changed for readers either.
            if !self.in_flight(id) {
                continue;
            }
            let deadline = at_of(base, e.at_micros);
            if let Some(slot) = self.current_mut(id.key) {
                let sent = deadline
                    .checked_sub(slot.liveness.timeout())
                    .unwrap_or(deadline);
                if slot.liveness.is_in_flight(id.seq) && doubtful(sent, deadline) {
                    slot.liveness.void(id.seq);
                    voided += 1;
                    continue;
                }
            }
            // Awareness first: if this silence makes half the peers silent
            // at once, every threshold widens before it is judged. Only
            // peers that were answering count, and only among them: the
            // silence of a peer already down, or never heard, says nothing
            // about the monitor, and a registry half full of decommissioned
            // peers must not keep every live one at four times its bound.
            let answering = self
                .current(id.key)
                .is_some_and(|slot| slot.liveness.state() == PeerState::Alive);
            if answering
                && self.in_flight(id)
                && self.awareness.on_silence(now, e.key, self.alive, window)
            {
                self.apply_tolerance();
            }
            let mut changes = std::mem::take(&mut self.changes);
            let expired = self
                .current_mut(id.key)
                .and_then(|slot| slot.liveness.on_expired(id.seq, now, &mut changes));
            self.record_changes(id.key.slot, &mut changes);
            self.changes = changes;
            if let Some((paths, counted)) = expired {
                out.push(Expired { id, paths, counted });
            }
        }
        voided
    }

    /// Appends to `out` every heartbeat due at or before `now`, records each
    /// as in flight, and schedules each peer's next one. The driver then says
    /// on which path each went ([`PeerTable::mark_sent`]); one it sends on no
    /// path is a miss when its timeout passes.
    pub fn poll_due(&mut self, now: Instant, out: &mut Vec<Probe>) {
        self.poll_due_at_most(now, out, usize::MAX);
    }

    /// [`PeerTable::poll_due`], taking at most `limit` heartbeats: the rest
    /// stay due (and [`PeerTable::next_deadline`] says so) for the next
    /// call. A driver's work per wake-up then has a bound, whatever falls
    /// due at once (a registration of thousands of peers, a long pause).
    pub fn poll_due_at_most(&mut self, now: Instant, out: &mut Vec<Probe>, limit: usize) {
        let base = *self.base.get_or_insert(now);
        // Whole microseconds passed: a timer due at `d` fires once
        // `base + d` is reached.
        let now_micros = micros(now.saturating_duration_since(base));
        let mut taken = 0usize;
        while let Some(Reverse((due, slot_no))) = self.timers.peek().copied() {
            if due > now_micros || taken >= limit {
                break;
            }
            self.timers.pop();
            if !self.is_current(due, slot_no) {
                continue;
            }
            let mut changes = std::mem::take(&mut self.changes);
            let Some(slot) = self.slot_mut(slot_no) else {
                self.changes = changes;
                continue;
            };
            let freq = micros(slot.spec.detector.heartbeat_freq);
            let timeout = slot.liveness.timeout();
            let generation = slot.generation;
            let mut next = due.saturating_add(freq);
            if next <= now_micros {
                // Late by a whole period or more: no catch-up burst.
                next = now_micros.saturating_add(freq);
            }
            slot.next_due = next;
            let seq = slot.liveness.on_send(now, &mut changes);
            self.record_changes(slot_no, &mut changes);
            self.changes = changes;
            self.timers.push(Reverse((next, slot_no)));
            let key = PeerKey {
                slot: slot_no,
                generation,
            };
            self.expiries.push(Reverse(Expiry {
                at_micros: micros_after(base, now + timeout),
                key: key.to_bits(),
                seq,
            }));
            out.push(Probe {
                id: ProbeId { key, seq },
                due: at_of(base, due),
                sent_at: now,
            });
            taken += 1;
        }
    }

    /// Records that heartbeat `id` went out over `path`; with `trial`, its
    /// silence is not held against the peer. Returns false if the table does
    /// not wait for `id` (any more).
    pub fn mark_sent(&mut self, id: ProbeId, path: Path, trial: bool) -> bool {
        match self.current_mut(id.key) {
            Some(slot) => slot.liveness.mark_sent(id.seq, path, trial),
            None => false,
        }
    }

    /// A reply that names heartbeat `id` arrived over `path` at `now`. It
    /// counts only if the table still waits for `id` on that path; the
    /// verdict says what it was taken for.
    pub fn on_reply(
        &mut self,
        id: ProbeId,
        path: Path,
        now: Instant,
        reply: Reply<'_>,
    ) -> ReplyVerdict {
        self.on_reply_in(id, path, Arrival::at(now), reply)
    }

    /// [`PeerTable::on_reply`] for a reply that came within `arrival`: a
    /// driver that read it late says since when it had not looked, and the
    /// reply is judged at the earliest moment it may have arrived.
    pub fn on_reply_in(
        &mut self,
        id: ProbeId,
        path: Path,
        arrival: Arrival,
        reply: Reply<'_>,
    ) -> ReplyVerdict {
        let mut changes = std::mem::take(&mut self.changes);
        let verdict = match self.current_mut(id.key) {
            Some(slot) => slot.liveness.on_reply_in(
                id.seq,
                path,
                arrival,
                &slot.spec.peer_id,
                reply,
                &mut changes,
            ),
            None => ReplyVerdict::NotInFlight,
        };
        self.record_changes(id.key.slot, &mut changes);
        self.changes = changes;
        verdict
    }

    /// An answer to indirect round `id`, carried by helper `via` (what it
    /// saw of the peer); see [`PeerLiveness::on_indirect_reply`].
    pub fn on_indirect_reply(
        &mut self,
        id: ProbeId,
        arrival: Arrival,
        reply: Reply<'_>,
        via: &str,
    ) -> ReplyVerdict {
        let mut changes = std::mem::take(&mut self.changes);
        let verdict = match self.current_mut(id.key) {
            Some(slot) => slot.liveness.on_indirect_reply(
                id.seq,
                arrival,
                &slot.spec.peer_id,
                reply,
                via,
                &mut changes,
            ),
            None => ReplyVerdict::NotInFlight,
        };
        self.record_changes(id.key.slot, &mut changes);
        self.changes = changes;
        verdict
    }

    /// Sending heartbeat `id` over `path` failed at `now`; if no other path
    /// carries it, it is a miss now.
    pub fn on_path_failed(&mut self, id: ProbeId, path: Path, now: Instant) {
        let mut changes = std::mem::take(&mut self.changes);
        if let Some(slot) = self.current_mut(id.key) {
            slot.liveness
                .on_path_failed(id.seq, path, now, &mut changes);
        }
        self.record_changes(id.key.slot, &mut changes);
        self.changes = changes;
    }

    /// Heartbeat `id` gets no outcome, neither answer nor miss: the driver
    /// could not carry it for reasons of its own (a full send buffer, its
    /// budget of gRPC calls spent), which say nothing about the peer.
    /// Returns whether it was in flight.
    pub fn void(&mut self, id: ProbeId) -> bool {
        self.current_mut(id.key)
            .is_some_and(|slot| slot.liveness.void(id.seq))
    }

    /// The paths heartbeat `id` is in flight on, if the table waits for it.
    pub fn in_flight(&self, id: ProbeId) -> bool {
        self.current(id.key)
            .is_some_and(|slot| slot.liveness.is_in_flight(id.seq))
    }

    fn record_changes(&mut self, slot_no: u32, changes: &mut Vec<Change>) {
        if !changes.is_empty() {
            self.count_alive(slot_no);
        }
        for change in changes.drain(..) {
            let kind = match change {
                Change::Up => EventKind::PeerUp,
                Change::Down => EventKind::PeerDown,
                Change::Restarted { previous, .. } => EventKind::Restarted { previous },
                Change::IdentityMismatch { observed } => EventKind::IdentityMismatch { observed },
                Change::ReachedIndirectly { via } => EventKind::ReachedIndirectly { via },
                Change::Suspect { seq, until } => {
                    self.open_round(slot_no, seq, until);
                    continue;
                }
            };
            self.push_event(slot_no, kind);
        }
    }

    /// Schedules the timeout of an indirect round and hands it to the
    /// driver.
    fn open_round(&mut self, slot_no: u32, seq: u64, until: Instant) {
        let Some(generation) = self.slots.get(slot_no as usize).map(|s| s.generation) else {
            return;
        };
        let key = PeerKey {
            slot: slot_no,
            generation,
        };
        let base = *self.base.get_or_insert(until);
        self.expiries.push(Reverse(Expiry {
            at_micros: micros_after(base, until),
            key: key.to_bits(),
            seq,
        }));
        self.suspects.push(ProbeId { key, seq });
    }

    fn push_event(&mut self, slot_no: u32, kind: EventKind) {
        if let Some(slot) = self.slots.get(slot_no as usize) {
            self.events.push(LivenessEvent {
                peer_id: slot.spec.peer_id.clone(),
                kind,
                state: slot.liveness.state(),
                epoch: slot.liveness.epoch(),
            });
        }
    }

    /// Takes the events recorded since the last call, oldest first.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, LivenessEvent> {
        self.events.drain(..)
    }

    /// The registration behind `key`, if still current.
    pub fn spec(&self, key: PeerKey) -> Option<&PeerSpec> {
        self.current(key).map(|s| &*s.spec)
    }

    /// The round-trip time of the last valid reply of the peer under `key`:
    /// read right after an accepted [`PeerTable::on_reply`], the RTT of that
    /// reply (for a histogram, without a copy of the status).
    pub fn last_rtt(&self, key: PeerKey) -> Option<Duration> {
        self.current(key).and_then(|s| s.liveness.last_rtt())
    }

    /// The key of `peer_id`'s current registration.
    pub fn key_of(&self, peer_id: &str) -> Option<PeerKey> {
        let slot_no = self.slot_of(peer_id)?;
        let slot = self.slots.get(slot_no as usize)?;
        Some(PeerKey {
            slot: slot_no,
            generation: slot.generation,
        })
    }

    /// The status of one peer.
    pub fn status(&self, peer_id: &str) -> Option<PeerStatus> {
        let slot_no = self.slot_of(peer_id)?;
        self.slots
            .get(slot_no as usize)
            .map(|s| status_of(slot_no, s))
    }

    /// The published form of one peer's status (see [`PublishedStatus`]).
    pub fn published(&self, peer_id: &str) -> Option<PublishedStatus> {
        let slot_no = self.slot_of(peer_id)?;
        self.slots
            .get(slot_no as usize)
            .map(|s| published_of(slot_no, s))
    }

    /// The published form of every peer's status, in no order: what a view
    /// of the table starts from.
    pub fn published_all(&self) -> Vec<PublishedStatus> {
        self.slots
            .indexed()
            .map(|(n, s)| published_of(n as u32, s))
            .collect()
    }

    /// The status of every peer, ordered by peer id.
    pub fn statuses(&self) -> Vec<PeerStatus> {
        let mut all: Vec<PeerStatus> = self
            .slots
            .indexed()
            .map(|(n, s)| status_of(n as u32, s))
            .collect();
        all.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        all
    }

    /// Up to `limit` statuses of the peers whose id sorts after `after` (all
    /// ids when `None`), ordered by id, and whether more follow.
    ///
    /// Costs one pass over the table and a heap of `limit` entries: a page
    /// of a large registry is served without sorting, or copying, the whole
    /// table. Pages stay consistent under concurrent changes in the way a
    /// cursor over ids does: a peer registered or removed between two pages
    /// shows or not depending on where its id falls, and no other peer is
    /// skipped or repeated.
    pub fn statuses_page(&self, after: Option<&str>, limit: usize) -> (Vec<PeerStatus>, bool) {
        use std::collections::BinaryHeap;
        let limit = limit.max(1);
        // A max-heap of the `limit + 1` smallest ids seen: the extra one
        // tells whether another page follows.
        let mut smallest: BinaryHeap<(&str, u32)> = BinaryHeap::with_capacity(limit + 1);
        for &slot in &self.index {
            let Some(s) = self.slots.get(slot as usize) else {
                continue;
            };
            let id: &str = &s.spec.peer_id;
            if after.is_some_and(|a| id <= a) {
                continue;
            }
            if smallest.len() <= limit {
                smallest.push((id, slot));
            } else if smallest.peek().is_some_and(|&(top, _)| id < top) {
                smallest.pop();
                smallest.push((id, slot));
            }
        }
        let more = smallest.len() > limit;
        let mut page = smallest.into_sorted_vec();
        page.truncate(limit);
        let statuses = page
            .into_iter()
            .filter_map(|(_, n)| self.slots.get(n as usize).map(|s| status_of(n, s)))
            .collect();
        (statuses, more)
    }

    /// Every registered peer's address, for drivers that pool connections.
    pub fn addresses(&self) -> impl Iterator<Item = (&str, u16)> + '_ {
        self.slots
            .iter()
            .map(|s| (s.spec.host.as_str(), s.spec.port))
    }

    /// How many peers are in each state.
    pub fn state_counts(&self) -> StateCounts {
        let mut counts = StateCounts::default();
        for slot in self.slots.iter() {
            match slot.liveness.state() {
                PeerState::Unknown => counts.unknown += 1,
                PeerState::Alive => counts.alive += 1,
                PeerState::Unreachable => counts.unreachable += 1,
            }
        }
        counts
    }

    /// The slot registered under `peer_id`.
    fn slot_of(&self, peer_id: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(peer_id);
        let slots = &self.slots;
        self.index
            .find(hash, |&n| {
                slots
                    .get(n as usize)
                    .is_some_and(|s| &*s.spec.peer_id == peer_id)
            })
            .copied()
    }

    fn slot_mut(&mut self, slot_no: u32) -> Option<&mut Slot<F::Detector>> {
        self.mark_changed(slot_no);
        self.slots.get_mut(slot_no as usize)
    }

    fn mark_changed(&mut self, slot_no: u32) {
        let n = slot_no as usize;
        if self.queued.len() <= n {
            self.queued.resize(n + 1, false);
        }
        if !self.queued[n] {
            self.queued[n] = true;
            self.changed.push_back(slot_no);
        }
    }

    /// Appends to `out` what changed in the peers' statuses since the last
    /// call: every deregistration, then the current status of at most
    /// `budget` changed peers, oldest change first (the rest wait for the
    /// next call). Returns how many changed peers are still waiting. A
    /// driver calls it once per wake-up, so that its work for readers
    /// follows its own work and never the size of the table.
    pub fn take_changes(&mut self, budget: usize, out: &mut Vec<StatusChange>) -> usize {
        self.trim_buffers();
        out.extend(self.removed.drain(..).map(StatusChange::Removed));
        for _ in 0..budget {
            let Some(slot_no) = self.changed.pop_front() else {
                break;
            };
            if let Some(q) = self.queued.get_mut(slot_no as usize) {
                *q = false;
            }
            if let Some(slot) = self.slots.get(slot_no as usize) {
                out.push(StatusChange::Upsert(published_of(slot_no, slot)));
            }
        }
        self.changed.len()
    }

    /// Gives back what a burst left in the buffers that are empty between
    /// two wake-ups: registering or restoring a million peers at once queues
    /// a million changes and events, and the 12 MB they took must not stay
    /// with the table for the rest of its life.
    fn trim_buffers(&mut self) {
        const KEEP: usize = 4096;
        if self.events.is_empty() && self.events.capacity() > KEEP {
            self.events.shrink_to(KEEP);
        }
        if self.changed.capacity() > KEEP.max(2 * self.changed.len()) {
            self.changed.shrink_to(KEEP.max(self.changed.len()));
        }
        if self.changes.capacity() > KEEP {
            self.changes.shrink_to(KEEP);
        }
    }

    /// Forgets the changes [`PeerTable::take_changes`] would report: for a
    /// view just filled from [`PeerTable::statuses`].
    pub fn forget_changes(&mut self) {
        self.changed.clear();
        self.queued.clear();
        self.removed.clear();
    }

    fn current(&self, key: PeerKey) -> Option<&Slot<F::Detector>> {
        self.slots
            .get(key.slot as usize)
            .filter(|s| s.generation == key.generation)
    }

    fn current_mut(&mut self, key: PeerKey) -> Option<&mut Slot<F::Detector>> {
        self.slot_mut(key.slot)
            .filter(|s| s.generation == key.generation)
    }
}

fn micros_after(base: Instant, at: Instant) -> u64 {
    let micros = at.saturating_duration_since(base).as_nanos().div_ceil(1000);
    u64::try_from(micros).unwrap_or(u64::MAX)
}

fn at_of(base: Instant, micros: u64) -> Instant {
    // `micros` was made from an `Instant` that exists, rounded up by less
    // than a microsecond, so the sum exists too.
    base.checked_add(Duration::from_micros(micros))
        .unwrap_or(base)
}

/// A stable offset in `[0, period)` derived from `id`: FNV-1a, then a
/// finaliser, because ids that differ only in their last characters
/// (`peer-1`, `peer-2`) would otherwise land close together.
fn phase(id: &str, period: Duration) -> Duration {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    let nanos = period.as_nanos();
    Duration::from_nanos(((u128::from(h) * nanos) >> 64) as u64)
}

fn published_of<D: crate::detector::FailureDetector>(
    slot_no: u32,
    slot: &Slot<D>,
) -> PublishedStatus {
    let l = &slot.liveness;
    PublishedStatus {
        spec: slot.spec.clone(),
        remarks: l.remarks().map(|r| Box::new(r.clone())),
        epoch: l.epoch().unwrap_or(0),
        heartbeats_sent: l.heartbeats_sent(),
        heartbeats_acked: l.heartbeats_acked(),
        rtt_micros: l.last_rtt_micros(),
        missed: l.missed(),
        slot: slot_no,
        state: l.state(),
        has_epoch: l.epoch().is_some(),
        reached_indirectly: l.reached_indirectly(),
    }
}

fn status_of<D: crate::detector::FailureDetector>(slot_no: u32, slot: &Slot<D>) -> PeerStatus {
    // One mapping from a slot to a status: the published form's.
    published_of(slot_no, slot).to_status()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn spec(id: &str, freq_ms: u64) -> PeerSpec {
        PeerSpec::new(
            id,
            "127.0.0.1",
            9000,
            DetectorConfig::new(ms(freq_ms), None, None).unwrap(),
        )
        .unwrap()
    }

    fn ack(table: &mut PeerTable, p: &Probe, at: Instant, id: &str, epoch: u64) -> ReplyVerdict {
        table.mark_sent(p.id, Path::Datagram, false);
        table.on_reply(
            p.id,
            Path::Datagram,
            at,
            Reply {
                responder_id: id,
                responder_epoch: epoch,
            },
        )
    }

    /// Sends what is due at `at` (as datagrams), after expiring what timed out.
    fn tick(table: &mut PeerTable, at: Instant) -> Vec<Probe> {
        table.poll_expired(at, &mut Vec::new());
        let mut out = Vec::new();
        table.poll_due(at, &mut out);
        for p in &out {
            table.mark_sent(p.id, Path::Datagram, false);
        }
        out
    }

    fn kinds(table: &mut PeerTable) -> Vec<(String, EventKind)> {
        table
            .drain_events()
            .map(|e| (e.peer_id.to_string(), e.kind))
            .collect()
    }

    #[test]
    fn the_heartbeat_demand_follows_every_registration_update_and_removal() {
        let t0 = Instant::now();
        let per_second = HeartbeatRate::per_second;
        let mut table = PeerTable::new();
        assert_eq!(table.heartbeat_demand(), HeartbeatRate::ZERO);
        table.upsert(spec("a", 5), t0);
        table.upsert(spec("b", 5), t0);
        table.restore(spec("c", 100), Some(1), t0);
        assert_eq!(table.heartbeat_demand(), per_second(410));
        table.upsert(spec("a", 1), t0);
        assert_eq!(table.heartbeat_demand(), per_second(1210), "an update");
        table.upsert(spec("a", 1), t0);
        assert_eq!(table.heartbeat_demand(), per_second(1210), "unchanged");
        table.restore(spec("a", 10), None, t0);
        assert_eq!(table.heartbeat_demand(), per_second(310), "restored over");
        assert!(table.remove("b"));
        assert!(!table.remove("b"));
        assert_eq!(table.heartbeat_demand(), per_second(110));
        table.remove("a");
        table.remove("c");
        assert_eq!(table.heartbeat_demand(), HeartbeatRate::ZERO);
    }

    #[test]
    fn each_peer_is_heartbeated_at_its_own_frequency() {
        let t0 = Instant::now();
        let mut t = PeerTable::new();
        t.upsert(spec("fast", 10), t0);
        t.upsert(spec("slow", 25), t0);
        let mut sent = Vec::new();
        let mut now = t0;
        while now <= t0 + ms(100) {
            let mut due = Vec::new();
            t.poll_expired(now, &mut Vec::new());
            t.poll_due(now, &mut due);
            for p in due {
                sent.push((t.spec(p.id.peer()).unwrap().peer_id.to_string(), now - t0));
            }
            now = t.next_deadline().unwrap();
        }
        let at = |id: &str| -> Vec<u64> {
            sent.iter()
                .filter(|(p, _)| p == id)
                .map(|(_, d)| d.as_millis() as u64)
                .collect()
        };
        assert_eq!(at("fast"), (0..=10).map(|i| i * 10).collect::<Vec<_>>());
        assert_eq!(at("slow"), vec![0, 25, 50, 75, 100]);
    }

    #[test]
    fn pages_walk_every_peer_once_in_id_order() {
        let t0 = Instant::now();
        let mut t = PeerTable::new();
        // Inserted out of order, with ids that sort differently as numbers.
        let ids: Vec<String> = (0..1000)
            .map(|i| format!("p{}", (i * 7919) % 1000))
            .collect();
        for id in &ids {
            t.upsert(spec(id, 100), t0);
        }
        let mut expected: Vec<String> = ids.clone();
        expected.sort();
        for size in [1, 7, 999, 1000, 5000] {
            let mut seen = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let (page, more) = t.statuses_page(after.as_deref(), size);
                assert!(page.len() <= size);
                seen.extend(page.iter().map(|s| s.peer_id.clone()));
                assert!(
                    seen.len() <= expected.len(),
                    "page size {size}: a peer listed twice"
                );
                after = page.last().map(|s| s.peer_id.clone());
                if !more {
                    break;
                }
                assert_eq!(page.len(), size, "a page before the last is full");
            }
            assert_eq!(seen, expected, "page size {size}");
        }
        // A removed peer is not listed, and a cursor past it still works.
        t.remove("p5");
        let (page, more) = t.statuses_page(Some("p499"), 2);
        let got: Vec<&str> = page.iter().map(|s| s.peer_id.as_str()).collect();
        assert_eq!(got, ["p50", "p500"]);
        assert!(more);
        let (page, more) = t.statuses_page(Some("p999"), 10);
        assert!(page.is_empty() && !more);
    }

    #[test]
    fn state_counts_follow_each_peers_state() {
        let t0 = Instant::now();
        let mut t = PeerTable::new();
        assert_eq!(t.state_counts(), StateCounts::default());
        let once = DetectorConfig::new(ms(100), None, Some(1)).unwrap();
        t.upsert(spec("answers", 100), t0);
        t.upsert(
            PeerSpec::new("silent", "127.0.0.1", 9000, once).unwrap(),
            t0,
        );
        t.upsert(spec("new", 100), t0);
        let mut out = Vec::new();
        t.poll_due(t0, &mut out);
        for p in &out {
            match &*t.spec(p.id.peer()).unwrap().peer_id {
                "answers" => {
                    ack(&mut t, p, t0 + ms(1), "answers", 1);
                }
                "silent" => {
                    t.mark_sent(p.id, Path::Grpc, false);
                    t.on_path_failed(p.id, Path::Grpc, t0 + ms(100));
                }
                _ => {}
            }
        }
        let counts = t.state_counts();
        assert_eq!(
            counts,
            StateCounts {
                unknown: 1,
                alive: 1,
                unreachable: 1
            }
        );
        assert_eq!(counts.total(), t.len());
    }

    #[test]
    fn a_late_driver_sends_one_heartbeat_not_a_burst() {
        let t0 = Instant::now();
        let mut t = PeerTable::new();
        t.upsert(spec("p", 10), t0);
        let mut out = Vec::new();
        t.poll_due(t0, &mut out);
        out.clear();
        // The driver stalls for 95 ms: nine ticks were missed.
        t.poll_due(t0 + ms(95), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].due, t0 + ms(10));
        // The heartbeat of 0 ms times out at 10 ms, the one of 95 at 105.
        t.poll_expired(t0 + ms(95), &mut Vec::new());
        assert_eq!(t.next_deadline(), Some(t0 + ms(105)));
    }

    #[test]
    fn events_follow_the_liveness_rules() {
        let t0 = Instant::now();
        let mut t = PeerTable::new();
        t.upsert(spec("p", 100), t0);
        assert_eq!(kinds(&mut t), vec![("p".into(), EventKind::Registered)]);
        let mut out = Vec::new();
        t.poll_due(t0, &mut out);
        ack(&mut t, &out[0], t0 + ms(2), "p", 4);
        assert_eq!(kinds(&mut t), vec![("p".into(), EventKind::PeerUp)]);
        assert_eq!(t.status("p").unwrap().epoch, Some(4));
        for i in 1..=4 {
            tick(&mut t, t0 + ms(100 * i));
        }
        // The heartbeats of 100, 200 and 300 ms expired at 200, 300, 400.
        assert_eq!(kinds(&mut t), vec![("p".into(), EventKind::PeerDown)]);
        let st = t.status("p").unwrap();
        assert_eq!(st.state, PeerState::Unreachable);
        assert_eq!((st.heartbeats_sent, st.heartbeats_acked), (5, 1));
    }

    #[test]
    fn outcomes_for_an_old_registration_are_ignored() {
        let t0 = Instant::now();
        let mut t = PeerTable::new();
        t.upsert(spec("p", 100), t0);
        let mut out = Vec::new();
        t.poll_due(t0, &mut out);
        let old = out[0].clone();
        assert!(matches!(t.upsert(spec("p", 50), t0), Upsert::Updated(_)));
        assert_eq!(
            ack(&mut t, &old, t0 + ms(1), "p", 1),
            ReplyVerdict::NotInFlight
        );
        assert_eq!(t.status("p").unwrap().state, PeerState::Unknown);
        assert!(t.remove("p"));
        assert_eq!(
            ack(&mut t, &old, t0 + ms(2), "p", 1),
            ReplyVerdict::NotInFlight
        );
        assert!(t.status("p").is_none());
        assert!(!t.remove("p"));
    }

    fn changed_ids(t: &mut PeerTable, budget: usize) -> (Vec<String>, usize) {
        let mut out = Vec::new();
        let waiting = t.take_changes(budget, &mut out);
        let ids = out
            .into_iter()
            .map(|c| match c {
                StatusChange::Upsert(s) => format!("+{}:{}", s.peer_id(), s.heartbeats_sent),
                StatusChange::Removed(id) => format!("-{id}"),
            })
            .collect();
        (ids, waiting)
    }

    #[test]
    fn status_changes_come_once_each_within_the_budget_removals_first() {
        let t0 = Instant::now();
        let mut t = PeerTable::new();
        for id in ["a", "b", "c"] {
            t.upsert(spec(id, 100), t0);
        }
        assert_eq!(
            changed_ids(&mut t, 2),
            (vec!["+a:0".into(), "+b:0".into()], 1)
        );
        assert_eq!(changed_ids(&mut t, 2), (vec!["+c:0".into()], 0));
        assert_eq!(changed_ids(&mut t, 2), (vec![], 0), "nothing changed since");

        // A heartbeat sent changes a status; a deregistration comes first.
        let mut due = Vec::new();
        t.poll_due(t0, &mut due);
        t.remove("c");
        let (ids, waiting) = changed_ids(&mut t, 10);
        assert_eq!(waiting, 0);
        assert_eq!(ids[0], "-c");
        assert_eq!(ids[1..], ["+a:1".to_string(), "+b:1".to_string()]);

        t.upsert(spec("d", 100), t0);
        t.forget_changes();
        assert_eq!(changed_ids(&mut t, 10), (vec![], 0));
    }

    #[test]
    fn at_most_so_many_heartbeats_are_taken_at_once_the_rest_stay_due() {
        let t0 = Instant::now();
        let mut t = PeerTable::new();
        for i in 0..5 {
            t.upsert(spec(&format!("p{i}"), 100), t0);
        }
        let mut due = Vec::new();
        t.poll_due_at_most(t0, &mut due, 2);
        assert_eq!(due.len(), 2);
        assert_eq!(t.next_deadline(), Some(t0), "the rest are still due");
        t.poll_due_at_most(t0, &mut due, 10);
        assert_eq!(due.len(), 5);
        assert!(t.next_deadline().is_some_and(|d| d > t0));
    }

    #[test]
    fn registering_the_same_values_again_changes_nothing() {
        let t0 = Instant::now();
        let mut t = PeerTable::new();
        let key = t.upsert(spec("p", 100), t0).key();
        t.drain_events().for_each(drop);
        assert_eq!(
            t.upsert(spec("p", 100), t0 + ms(10)),
            Upsert::Unchanged(key)
        );
        assert!(kinds(&mut t).is_empty());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn updating_one_peer_in_a_loop_does_not_grow_the_timers() {
        let t0 = Instant::now();
        let mut t = PeerTable::new();
        t.upsert(spec("p", 100), t0);
        for i in 0..10_000u64 {
            let freq = if i % 2 == 0 { 200 } else { 100 };
            t.upsert(spec("p", freq), t0 + ms(i));
        }
        assert!(
            t.timers.len() <= 2 * t.len() + 64,
            "{} timers",
            t.timers.len()
        );
        // And the peer is still scheduled, once.
        let mut due = Vec::new();
        t.poll_due(t0 + ms(20_000), &mut due);
        assert_eq!(due.len(), 1);
    }

    #[test]
    fn a_removed_peer_is_no_longer_scheduled() {
        let t0 = Instant::now();
        let mut t = PeerTable::new();
        t.upsert(spec("a", 100), t0);
        t.upsert(spec("b", 100), t0);
        t.remove("a");
        let mut out = Vec::new();
        t.poll_due(t0 + ms(500), &mut out);
        let ids: Vec<_> = out
            .iter()
            .map(|p| t.spec(p.id.peer()).unwrap().peer_id.to_string())
            .collect();
        assert_eq!(ids, vec!["b"]);
        assert_eq!(
            kinds(&mut t).last().cloned(),
            Some(("a".into(), EventKind::Deregistered))
        );
    }

    #[test]
    fn restored_peers_remember_their_epoch() {
        let t0 = Instant::now();
        let mut t = PeerTable::new();
        t.restore(spec("p", 100), Some(3), t0);
        assert!(kinds(&mut t).is_empty());
        let mut out = Vec::new();
        t.poll_due(t0 + ms(100), &mut out);
        ack(&mut t, &out[0], t0 + ms(101), "p", 4);
        assert_eq!(
            kinds(&mut t),
            vec![
                ("p".into(), EventKind::Restarted { previous: 3 }),
                ("p".into(), EventKind::PeerUp)
            ]
        );
    }

    #[test]
    fn restored_peers_are_spread_over_one_period() {
        let t0 = Instant::now();
        let mut t = PeerTable::new();
        for i in 0..1000 {
            t.restore(spec(&format!("peer-{i}"), 1000), None, t0);
        }
        let mut buckets = [0usize; 10];
        let mut out = Vec::new();
        for b in 0..10u64 {
            t.poll_due(t0 + ms((b + 1) * 100), &mut out);
            buckets[b as usize] = out.len();
            out.clear();
        }
        assert_eq!(
            buckets.iter().sum::<usize>(),
            1000,
            "all due within one period"
        );
        assert!(
            buckets.iter().all(|&n| (50..=150).contains(&n)),
            "{buckets:?}"
        );
    }

    #[test]
    fn slots_are_reused_without_confusing_keys() {
        let t0 = Instant::now();
        let mut t = PeerTable::new();
        let a = t.upsert(spec("a", 100), t0).key();
        t.remove("a");
        let b = t.upsert(spec("b", 100), t0).key();
        assert_ne!(a, b);
        assert!(t.spec(a).is_none());
        assert_eq!(&*t.spec(b).unwrap().peer_id, "b");
    }
}

#[cfg(test)]
mod probe_ownership {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn table_with(
        t0: Instant,
        id: &str,
        freq_ms: u64,
        timeout_ms: u64,
        max_missed: u32,
    ) -> PeerTable {
        let mut t = PeerTable::new();
        let d = DetectorConfig::new(ms(freq_ms), Some(ms(timeout_ms)), Some(max_missed)).unwrap();
        t.upsert(PeerSpec::new(id, "127.0.0.1", 9000, d).unwrap(), t0);
        t
    }

    fn reply(id: &str, epoch: u64) -> Reply<'_> {
        Reply {
            responder_id: id,
            responder_epoch: epoch,
        }
    }

    #[test]
    fn a_reply_naming_a_heartbeat_never_sent_changes_nothing() {
        let t0 = Instant::now();
        let mut t = table_with(t0, "p", 100, 100, 1);
        let mut out = Vec::new();
        t.poll_due(t0, &mut out);
        let real = out[0].id;
        t.mark_sent(real, Path::Datagram, false);
        let forged = [
            ProbeId {
                key: real.key,
                seq: u64::MAX,
            },
            ProbeId {
                key: real.key,
                seq: real.seq + 1,
            },
            ProbeId {
                key: real.key,
                seq: 0,
            },
            ProbeId {
                key: PeerKey::from_bits(u64::MAX),
                seq: real.seq,
            },
            ProbeId {
                key: PeerKey {
                    slot: real.key.slot,
                    generation: real.key.generation + 1,
                },
                seq: real.seq,
            },
        ];
        for id in forged {
            assert_eq!(
                t.on_reply(id, Path::Datagram, t0, reply("p", u64::MAX)),
                ReplyVerdict::NotInFlight,
                "{id:?}"
            );
        }
        assert_eq!(t.status("p").unwrap().epoch, None, "no epoch believed");
        assert_eq!(t.drain_events().count(), 1, "only the registration");
        // The real heartbeat still times out as a miss.
        t.poll_expired(t0 + ms(100), &mut out_expired());
        assert_eq!(t.status("p").unwrap().state, PeerState::Unreachable);
    }

    fn out_expired() -> Vec<Expired> {
        Vec::new()
    }

    #[test]
    fn a_heartbeat_is_expired_once_at_its_timeout_with_its_paths() {
        let t0 = Instant::now();
        let mut t = table_with(t0, "p", 100, 40, 3);
        let mut out = Vec::new();
        t.poll_due(t0, &mut out);
        let id = out[0].id;
        t.mark_sent(id, Path::Datagram, true);
        assert_eq!(t.next_deadline(), Some(t0 + ms(40)));
        let mut expired = Vec::new();
        t.poll_expired(t0 + ms(39), &mut expired);
        assert!(expired.is_empty());
        t.poll_expired(t0 + ms(40), &mut expired);
        assert_eq!(
            expired,
            vec![Expired {
                id,
                paths: Paths::only(Path::Datagram),
                counted: false
            }]
        );
        t.poll_expired(t0 + ms(41), &mut expired);
        assert_eq!(expired.len(), 1);
        assert_eq!(t.status("p").unwrap().missed, 0, "a trial does not count");
    }

    #[test]
    fn a_silence_the_driver_may_have_lost_itself_is_voided_not_missed() {
        let t0 = Instant::now();
        let mut t = table_with(t0, "p", 100, 40, 1);
        let mut due = Vec::new();
        t.poll_due(t0, &mut due);
        t.mark_sent(due[0].id, Path::Datagram, false);
        // Replies were dropped on the driver's socket 10 to 20 ms after the
        // heartbeat left: its silence proves nothing.
        let (lost_from, lost_to) = (t0 + ms(10), t0 + ms(20));
        let doubtful = |sent: Instant, deadline: Instant| lost_from < deadline && lost_to > sent;
        let mut expired = Vec::new();
        let voided = t.poll_expired_doubting(t0 + ms(40), &mut expired, 16, doubtful);
        assert_eq!((voided, expired.len()), (1, 0));
        assert_eq!(t.status("p").unwrap().state, PeerState::Unknown);
        // The next one, sent after the loss, is judged as usual.
        due.clear();
        t.poll_due(t0 + ms(100), &mut due);
        t.mark_sent(due[0].id, Path::Datagram, false);
        let voided = t.poll_expired_doubting(t0 + ms(140), &mut expired, 16, doubtful);
        assert_eq!((voided, expired.len()), (0, 1));
        assert_eq!(t.status("p").unwrap().state, PeerState::Unreachable);
    }

    #[test]
    fn a_poisoned_epoch_is_forgotten_when_the_peer_is_registered_again() {
        let t0 = Instant::now();
        let mut t = table_with(t0, "p", 100, 50, 1);
        let mut due = Vec::new();
        t.poll_due(t0, &mut due);
        t.mark_sent(due[0].id, Path::Datagram, false);
        // Someone on the path answered first, claiming the highest epoch.
        let forged = t.on_reply(due[0].id, Path::Datagram, t0, reply("p", u64::MAX));
        assert_eq!(forged, ReplyVerdict::Accepted);
        // The genuine replies now look stale: the peer goes down.
        due.clear();
        t.poll_due(t0 + ms(100), &mut due);
        t.mark_sent(due[0].id, Path::Datagram, false);
        let genuine = t.on_reply(due[0].id, Path::Datagram, t0 + ms(101), reply("p", 1));
        assert_eq!(genuine, ReplyVerdict::StaleEpoch);
        assert_eq!(t.status("p").unwrap().state, PeerState::Unreachable);
        // The operator registers it again (a new timeout): the epoch learned
        // from the forgery goes, and the genuine replies count.
        let d = DetectorConfig::new(ms(100), Some(ms(60)), Some(1)).unwrap();
        t.upsert(
            PeerSpec::new("p", "127.0.0.1", 9000, d).unwrap(),
            t0 + ms(150),
        );
        assert_eq!(t.status("p").unwrap().epoch, None);
        due.clear();
        t.poll_due(t0 + ms(150), &mut due);
        t.mark_sent(due[0].id, Path::Datagram, false);
        let genuine = t.on_reply(due[0].id, Path::Datagram, t0 + ms(151), reply("p", 1));
        assert_eq!(genuine, ReplyVerdict::Accepted);
    }

    #[test]
    fn at_most_so_many_timeouts_are_settled_at_once_the_rest_stay_due() {
        let t0 = Instant::now();
        let mut t = PeerTable::new();
        let d = DetectorConfig::new(ms(100), Some(ms(40)), Some(3)).unwrap();
        for id in ["a", "b", "c"] {
            t.upsert(PeerSpec::new(id, "127.0.0.1", 9000, d).unwrap(), t0);
        }
        let mut due = Vec::new();
        t.poll_due(t0 + ms(100), &mut due);
        assert_eq!(due.len(), 3);
        for p in &due {
            t.mark_sent(p.id, Path::Datagram, false);
        }
        let late = t0 + ms(200);
        let mut expired = Vec::new();
        t.poll_expired_at_most(late, &mut expired, 2);
        assert_eq!(expired.len(), 2);
        assert!(
            t.next_deadline().is_some_and(|d| d <= late),
            "one still due"
        );
        t.poll_expired_at_most(late, &mut expired, 2);
        assert_eq!(expired.len(), 3);
        assert!(expired.iter().all(|e| e.counted));
    }
}
