//! `PeerLiveness` against a reference model of the liveness rule (the module
//! doc of `liveness.rs`, and docs/PROTOCOL.md, "Liveness, exactly"), driven by
//! arbitrary sequences of sends, marks, replies (genuine, duplicated, late,
//! on the wrong path, from another identity, with any epoch, for any sequence
//! number up to `u64::MAX`), path failures, expiries and clock steps.
//!
//! The model keeps what the rule talks about in the plainest data structures:
//! a map of the heartbeats in flight with their send times and paths, the
//! latest acknowledged heartbeat, the consecutive misses, the state and the
//! epoch. After every step the state machine must agree with it on the
//! verdict, the events (each exactly once, in order) and every figure it
//! reports. A few properties are also checked without the model, straight
//! from the rule: each transition raises exactly one event, anything that
//! names no heartbeat in flight changes nothing, only an accepted reply moves
//! the epoch, and silence convicts within `max_missed` heartbeats (and within
//! `max_missed x frequency + timeout` of the last valid reply).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use heartbeater_core::{
    Change, DetectorConfig, Path, PeerLiveness, PeerState, Reply, ReplyVerdict, PROBE_WINDOW,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// The identity the peer is registered with.
const ID: &str = "the-peer";

/// Others that may answer in its place: a stranger, the same name in another
/// case, a longer name with the right prefix, nothing at all.
const IMPOSTORS: [&str; 4] = ["a-stranger", "THE-PEER", "the-peer-2", ""];

// ------------------------------------------------------------------ model

/// A heartbeat the model still waits for.
#[derive(Debug, Clone)]
struct Heartbeat {
    /// The model's own record of the send: the only clock an RTT is read from.
    sent_at: Instant,
    /// Paths that still carry it (a failed path no longer does).
    paths: Vec<Path>,
    /// The `trial` flag of every `mark_sent`, in order.
    marks: Vec<bool>,
}

impl Heartbeat {
    /// A trial's silence is not held against the peer, but a heartbeat sent
    /// on any path without `trial` counts, and so does one that left on no
    /// path at all.
    fn silence_counts(&self) -> bool {
        self.marks.is_empty() || self.marks.contains(&false)
    }
}

/// The rule, plainly.
#[derive(Debug)]
struct Model {
    timeout: Duration,
    max_missed: u32,
    next_seq: u64,
    in_flight: BTreeMap<u64, Heartbeat>,
    /// Heartbeats that had their outcome, to name them again.
    settled: Vec<u64>,
    /// Highest heartbeat validly acknowledged, 0 before the first.
    last_acked_seq: u64,
    missed: u32,
    state: PeerState,
    epoch: Option<u64>,
    sent: u64,
    acked: u64,
    last_rtt: Option<Duration>,
    /// Whether the current run of replies from other identities was reported.
    mismatch_reported: bool,
}

impl Model {
    fn new(config: DetectorConfig, known_epoch: Option<u64>) -> Self {
        Self {
            timeout: config.timeout,
            max_missed: config.max_missed.get(),
            next_seq: 1,
            in_flight: BTreeMap::new(),
            settled: Vec::new(),
            last_acked_seq: 0,
            missed: 0,
            state: PeerState::Unknown,
            epoch: known_epoch,
            sent: 0,
            acked: 0,
            last_rtt: None,
            mismatch_reported: false,
        }
    }

    /// A heartbeat without a valid reply is a miss, unless a later heartbeat
    /// was already acknowledged; `max_missed` consecutive misses convict.
    fn miss(&mut self, seq: u64, out: &mut Vec<Change>) -> bool {
        if seq <= self.last_acked_seq {
            return false;
        }
        self.missed += 1;
        if self.missed >= self.max_missed && self.state != PeerState::Unreachable {
            self.state = PeerState::Unreachable;
            out.push(Change::Down);
        }
        true
    }

    /// A heartbeat that got no reply at all (timeout, every path failed,
    /// displaced): a miss unless it was only ever a trial.
    fn silence(&mut self, seq: u64, heartbeat: &Heartbeat, out: &mut Vec<Change>) -> bool {
        heartbeat.silence_counts() && self.miss(seq, out)
    }

    /// Every heartbeat gets exactly one outcome: once settled, it is gone.
    fn settle(&mut self, seq: u64) -> Option<Heartbeat> {
        let heartbeat = self.in_flight.remove(&seq)?;
        self.settled.push(seq);
        Some(heartbeat)
    }

    fn send(&mut self, now: Instant, out: &mut Vec<Change>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.sent += 1;
        // The window covers the last PROBE_WINDOW sequence numbers: the one
        // this heartbeat pushes out, if still waiting, is a silence.
        if let Some(old) = seq.checked_sub(PROBE_WINDOW as u64) {
            if let Some(heartbeat) = self.settle(old) {
                self.silence(old, &heartbeat, out);
            }
        }
        self.in_flight.insert(
            seq,
            Heartbeat {
                sent_at: now,
                paths: Vec::new(),
                marks: Vec::new(),
            },
        );
        seq
    }

    fn mark(&mut self, seq: u64, path: Path, trial: bool) -> bool {
        let Some(heartbeat) = self.in_flight.get_mut(&seq) else {
            return false;
        };
        if !heartbeat.paths.contains(&path) {
            heartbeat.paths.push(path);
        }
        heartbeat.marks.push(trial);
        true
    }

    fn reply(
        &mut self,
        seq: u64,
        path: Path,
        now: Instant,
        identity: &str,
        epoch: u64,
        out: &mut Vec<Change>,
    ) -> ReplyVerdict {
        // Only a heartbeat still in flight, on a path it took, can be answered.
        let Some(heartbeat) = self.in_flight.get(&seq) else {
            return ReplyVerdict::NotInFlight;
        };
        if !heartbeat.paths.contains(&path) {
            return ReplyVerdict::WrongPath;
        }
        let heartbeat = self.settle(seq).expect("in flight");
        let rtt = now - heartbeat.sent_at;
        // Too late is as good as no reply (so a late trial is not held
        // against the peer either); who answered is not even looked at.
        if rtt > self.timeout {
            self.silence(seq, &heartbeat, out);
            return ReplyVerdict::Late;
        }
        if identity != ID {
            if !self.mismatch_reported {
                self.mismatch_reported = true;
                out.push(Change::IdentityMismatch {
                    observed: identity.to_owned(),
                });
            }
            self.miss(seq, out);
            return ReplyVerdict::WrongIdentity;
        }
        // The right identity answered: any run of impostors is over.
        self.mismatch_reported = false;
        if matches!(self.epoch, Some(known) if epoch < known) {
            self.miss(seq, out);
            return ReplyVerdict::StaleEpoch;
        }
        self.missed = 0;
        self.last_acked_seq = self.last_acked_seq.max(seq);
        self.acked += 1;
        self.last_rtt = Some(rtt);
        if let Some(previous) = self.epoch {
            if epoch > previous {
                out.push(Change::Restarted {
                    previous,
                    current: epoch,
                });
            }
        }
        self.epoch = Some(epoch);
        if self.state != PeerState::Alive {
            self.state = PeerState::Alive;
            out.push(Change::Up);
        }
        ReplyVerdict::Accepted
    }

    fn path_failed(&mut self, seq: u64, path: Path, out: &mut Vec<Change>) {
        let Some(heartbeat) = self.in_flight.get_mut(&seq) else {
            return;
        };
        heartbeat.paths.retain(|p| *p != path);
        if heartbeat.paths.is_empty() {
            let heartbeat = self.settle(seq).expect("in flight");
            self.silence(seq, &heartbeat, out);
        }
    }

    fn expire(&mut self, seq: u64, out: &mut Vec<Change>) -> Option<(Vec<Path>, bool)> {
        let heartbeat = self.settle(seq)?;
        let counted = self.silence(seq, &heartbeat, out);
        Some((heartbeat.paths, counted))
    }
}

// ------------------------------------------------------------- operations

/// Which heartbeat an operation names.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The `n`-th (modulo) of those in flight.
    InFlight(usize),
    /// The `n`-th (modulo) of those that already had their outcome.
    Settled(usize),
    /// The most recently sent, whatever became of it.
    Newest,
    /// `next + n`: a number not issued yet.
    Unissued(u64),
    /// This number, whatever it names (forged ones, the extremes).
    Number(u64),
}

/// Which path a reply (or a failure) comes by.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// The `n`-th (modulo) of the paths the heartbeat took (the datagram if
    /// none).
    Taken(usize),
    /// This one, taken or not.
    Either(Path),
}

#[derive(Debug, Clone, Copy)]
enum EpochChoice {
    Same,
    Higher,
    Lower,
    Max,
    Zero,
    Any(u64),
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Micros(u64),
    /// `n / 8` of the timeout.
    TimeoutEighths(u32),
    /// To the deadline of the `n`-th heartbeat in flight, give or take a
    /// microsecond (never backwards).
    ToDeadline(usize, i8),
}

#[derive(Debug, Clone)]
enum Op {
    /// `on_send`, then `mark_sent` for each `(path, trial)` in order.
    Send(Vec<(Path, bool)>),
    /// A `mark_sent` after the fact (a fallback path), for any number.
    Mark(Target, Path, bool),
    Reply {
        target: Target,
        via: Via,
        /// `None`: the registered identity answers.
        impostor: Option<usize>,
        epoch: EpochChoice,
    },
    PathFailed(Target, Via),
    Expire(Target),
    Advance(Step),
}

fn path() -> impl Strategy<Value = Path> {
    prop_oneof![Just(Path::Datagram), Just(Path::Grpc)]
}

fn via() -> impl Strategy<Value = Via> {
    prop_oneof![
        4 => any::<usize>().prop_map(Via::Taken),
        1 => path().prop_map(Via::Either),
    ]
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        6 => any::<usize>().prop_map(Target::InFlight),
        2 => any::<usize>().prop_map(Target::Settled),
        1 => Just(Target::Newest),
        1 => (0u64..3).prop_map(Target::Unissued),
        1 => prop_oneof![Just(0), Just(u64::MAX), Just(u64::MAX - 1), any::<u64>()]
            .prop_map(Target::Number),
    ]
}

fn epoch_choice() -> impl Strategy<Value = EpochChoice> {
    prop_oneof![
        8 => Just(EpochChoice::Same),
        2 => Just(EpochChoice::Higher),
        2 => Just(EpochChoice::Lower),
        1 => Just(EpochChoice::Max),
        1 => Just(EpochChoice::Zero),
        1 => any::<u64>().prop_map(EpochChoice::Any),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u64..2_000).prop_map(Step::Micros),
        4 => (0u32..=12).prop_map(Step::TimeoutEighths),
        3 => (any::<usize>(), -1i8..=1).prop_map(|(n, d)| Step::ToDeadline(n, d)),
        1 => (0u64..10_000_000_000).prop_map(Step::Micros),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => prop_oneof![
            1 => Just(0usize), // left on no path at all
            6 => Just(1),
            3 => Just(2),
        ]
        .prop_flat_map(|n| prop::collection::vec((path(), prop::bool::weighted(0.25)), n))
        .prop_map(Op::Send),
        1 => (target(), path(), any::<bool>()).prop_map(|(t, p, trial)| Op::Mark(t, p, trial)),
        6 => (
            target(),
            via(),
            prop::option::weighted(0.15, 0..IMPOSTORS.len()),
            epoch_choice(),
        )
            .prop_map(|(target, via, impostor, epoch)| Op::Reply {
                target,
                via,
                impostor,
                epoch
            }),
        1 => (target(), via()).prop_map(|(t, v)| Op::PathFailed(t, v)),
        2 => target().prop_map(Op::Expire),
        4 => step().prop_map(Op::Advance),
    ]
}

/// Any valid configuration: frequencies of 1 ms to an hour, a timeout of at
/// most 7 periods (and an hour), `max_missed` small or at its limit.
fn config() -> impl Strategy<Value = DetectorConfig> {
    let freq = prop_oneof![8 => 1u64..=200, 1 => 1u64..=3_600_000];
    let max_missed = prop_oneof![8 => 1u32..=6, 1 => Just(1000)];
    (freq, max_missed)
        .prop_flat_map(|(freq, max_missed)| {
            let longest = (7 * freq).min(3_600_000);
            let timeout = prop_oneof![Just(freq), Just(longest), 1..=longest];
            (Just(freq), timeout, Just(max_missed))
        })
        .prop_map(|(freq, timeout, max_missed)| {
            DetectorConfig::new(ms(freq), Some(ms(timeout)), Some(max_missed))
                .expect("timeout <= 7 x frequency, all within limits")
        })
}

/// The epoch remembered from before the monitor restarted, if any.
fn known_epoch() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        2 => Just(None),
        2 => (1u64..5).prop_map(Some),
        1 => Just(Some(0)),
        1 => Just(Some(u64::MAX)),
        1 => any::<u64>().prop_map(Some),
    ]
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------- harness

/// What `PeerLiveness` lets anyone observe.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    state: PeerState,
    epoch: Option<u64>,
    missed: u32,
    sent: u64,
    acked: u64,
    last_rtt: Option<Duration>,
    in_flight: Vec<u64>,
}

/// The state machine and the model side by side, fed the same operations.
struct Harness {
    real: PeerLiveness,
    model: Model,
    start: Instant,
    now: Instant,
    steps: usize,
    /// Every event raised, in order.
    events: Vec<Change>,
    /// Heartbeats sent since the last accepted reply, still in flight.
    since_last_ack: BTreeSet<u64>,
    /// Of those, how many were settled with no valid reply although their
    /// silence counts: each is a miss nothing has reset.
    silent_since_last_ack: u32,
}

impl Harness {
    fn new(config: DetectorConfig, known_epoch: Option<u64>) -> Self {
        let start = Instant::now();
        Self {
            real: PeerLiveness::new(config, known_epoch),
            model: Model::new(config, known_epoch),
            start,
            now: start,
            steps: 0,
            events: Vec::new(),
            since_last_ack: BTreeSet::new(),
            silent_since_last_ack: 0,
        }
    }

    fn resolve(&self, target: Target) -> u64 {
        let pick = |seqs: Vec<u64>, n: usize| {
            if seqs.is_empty() {
                self.model.next_seq
            } else {
                seqs[n % seqs.len()]
            }
        };
        match target {
            Target::InFlight(n) => pick(self.model.in_flight.keys().copied().collect(), n),
            Target::Settled(n) => pick(self.model.settled.clone(), n),
            Target::Newest => self.model.next_seq - 1,
            Target::Unissued(n) => self.model.next_seq + n,
            Target::Number(seq) => seq,
        }
    }

    fn path(&self, seq: u64, via: Via) -> Path {
        match via {
            Via::Taken(n) => match self.model.in_flight.get(&seq) {
                Some(h) if !h.paths.is_empty() => h.paths[n % h.paths.len()],
                _ => Path::Datagram,
            },
            Via::Either(path) => path,
        }
    }

    fn epoch(&self, choice: EpochChoice) -> u64 {
        let known = self.model.epoch.unwrap_or(1);
        match choice {
            EpochChoice::Same => known,
            EpochChoice::Higher => known.saturating_add(1),
            EpochChoice::Lower => known.saturating_sub(1),
            EpochChoice::Max => u64::MAX,
            EpochChoice::Zero => 0,
            EpochChoice::Any(epoch) => epoch,
        }
    }

    /// The clock is an `Instant`: it only ever moves forward, in whole
    /// microseconds (the window's resolution).
    fn advance(&mut self, step: Step) {
        let to = match step {
            Step::Micros(n) => self.now + Duration::from_micros(n),
            Step::TimeoutEighths(n) => self.now + self.model.timeout * n / 8,
            Step::ToDeadline(n, delta) => {
                let sent: Vec<Instant> = self.model.in_flight.values().map(|h| h.sent_at).collect();
                let Some(sent_at) = sent.get(n % sent.len().max(1)) else {
                    return;
                };
                let deadline = *sent_at + self.model.timeout;
                match delta {
                    -1 => deadline - Duration::from_micros(1),
                    0 => deadline,
                    _ => deadline + Duration::from_micros(1),
                }
            }
        };
        self.now = self.now.max(to);
    }

    fn snapshot(&self) -> Snapshot {
        let r = &self.real;
        let next = r.heartbeats_sent() + 1;
        let window = next.saturating_sub(2 * PROBE_WINDOW as u64)..=next;
        let in_flight = window
            .chain([0, u64::MAX])
            .filter(|seq| r.is_in_flight(*seq))
            .collect();
        Snapshot {
            state: r.state(),
            epoch: r.epoch(),
            missed: r.missed(),
            sent: r.heartbeats_sent(),
            acked: r.heartbeats_acked(),
            last_rtt: r.last_rtt(),
            in_flight,
        }
    }

    /// Applies `op` to both and checks everything after it; returns the
    /// verdict of a reply.
    fn step(&mut self, op: &Op) -> Result<Option<ReplyVerdict>, TestCaseError> {
        self.steps += 1;
        let step = self.steps;
        let before = self.snapshot();
        let flights_before = self.model.in_flight.clone();
        let (now, mut got, mut want) = (self.now, Vec::new(), Vec::new());
        let mut named = None;
        let mut verdict = None;
        match op {
            Op::Send(marks) => {
                let seq = self.real.on_send(now, &mut got);
                prop_assert_eq!(seq, self.model.send(now, &mut want), "step {}", step);
                self.since_last_ack.insert(seq);
                for (path, trial) in marks {
                    prop_assert!(self.real.mark_sent(seq, *path, *trial));
                    prop_assert!(self.model.mark(seq, *path, *trial));
                }
            }
            Op::Mark(target, path, trial) => {
                let seq = self.resolve(*target);
                named = Some(seq);
                prop_assert_eq!(
                    self.real.mark_sent(seq, *path, *trial),
                    self.model.mark(seq, *path, *trial),
                    "step {}: mark {}",
                    step,
                    seq
                );
            }
            Op::Reply {
                target,
                via,
                impostor,
                epoch,
            } => {
                let seq = self.resolve(*target);
                named = Some(seq);
                let path = self.path(seq, *via);
                let epoch = self.epoch(*epoch);
                let responder_id = impostor.map_or(ID, |i| IMPOSTORS[i]);
                let reply = Reply {
                    responder_id,
                    responder_epoch: epoch,
                };
                let v = self.real.on_reply(seq, path, now, ID, reply, &mut got);
                let expected = self
                    .model
                    .reply(seq, path, now, responder_id, epoch, &mut want);
                prop_assert_eq!(
                    v,
                    expected,
                    "step {}: reply to {} at {:?}",
                    step,
                    seq,
                    now - self.start
                );
                if v == ReplyVerdict::Accepted {
                    // The RTT is the local record of the send, nothing else.
                    let sent_at = flights_before[&seq].sent_at;
                    prop_assert_eq!(self.real.last_rtt(), Some(now - sent_at));
                    prop_assert_eq!(self.real.epoch(), Some(epoch));
                }
                if v == ReplyVerdict::WrongPath {
                    prop_assert_eq!(&self.snapshot(), &before, "a wrong path changes nothing");
                }
                verdict = Some(v);
            }
            Op::PathFailed(target, via) => {
                let seq = self.resolve(*target);
                named = Some(seq);
                let path = self.path(seq, *via);
                self.real.on_path_failed(seq, path, now, &mut got);
                self.model.path_failed(seq, path, &mut want);
            }
            Op::Expire(target) => {
                let seq = self.resolve(*target);
                named = Some(seq);
                let real = self.real.on_expired(seq, now, &mut got);
                let model = self.model.expire(seq, &mut want);
                let real = real.map(|(paths, counted)| {
                    let on = |p| paths.contains(p);
                    ((on(Path::Datagram), on(Path::Grpc)), counted)
                });
                let model = model.map(|(paths, counted)| {
                    let on = |p| paths.contains(&p);
                    ((on(Path::Datagram), on(Path::Grpc)), counted)
                });
                prop_assert_eq!(real, model, "step {}: expire {}", step, seq);
            }
            Op::Advance(s) => self.advance(*s),
        }
        prop_assert_eq!(&got, &want, "events at step {} ({:?})", step, op);
        let after = self.snapshot();
        self.agrees_with_model(&after)?;
        check_transition(&before, &after, &got, verdict)?;
        if let Some(seq) = named.filter(|seq| !flights_before.contains_key(seq)) {
            // Outcomes and marks for anything not in flight (never issued,
            // already settled, forged) are ignored entirely.
            prop_assert!(
                got.is_empty(),
                "step {}: {:?} for {} raised {:?}",
                step,
                op,
                seq,
                got
            );
            prop_assert_eq!(
                &after,
                &before,
                "step {}: {:?} for {} changed state",
                step,
                op,
                seq
            );
        }
        self.check_silence_convicts(&flights_before, verdict)?;
        self.events.extend(got);
        Ok(verdict)
    }

    fn agrees_with_model(&self, after: &Snapshot) -> Result<(), TestCaseError> {
        let m = &self.model;
        let expected = Snapshot {
            state: m.state,
            epoch: m.epoch,
            missed: m.missed,
            sent: m.sent,
            acked: m.acked,
            last_rtt: m.last_rtt,
            in_flight: m.in_flight.keys().copied().collect(),
        };
        prop_assert_eq!(after, &expected, "after step {}", self.steps);
        prop_assert_eq!(self.real.in_flight(), m.in_flight.len());
        prop_assert!(m.in_flight.len() <= PROBE_WINDOW);
        // The states, as the rule defines them.
        let convicted = m.missed >= m.max_missed;
        let consistent = match after.state {
            PeerState::Unknown => after.acked == 0 && !convicted,
            PeerState::Alive => after.acked > 0 && !convicted,
            PeerState::Unreachable => convicted,
        };
        prop_assert!(consistent, "step {}: {:?} with {:?}", self.steps, after, m);
        Ok(())
    }

    /// Heartbeats sent after the last accepted reply that settle without a
    /// valid one are misses nothing resets: `max_missed` of them convict.
    fn check_silence_convicts(
        &mut self,
        flights_before: &BTreeMap<u64, Heartbeat>,
        verdict: Option<ReplyVerdict>,
    ) -> Result<(), TestCaseError> {
        if verdict == Some(ReplyVerdict::Accepted) {
            self.since_last_ack.clear();
            self.silent_since_last_ack = 0;
            return Ok(());
        }
        let settled: Vec<u64> = self
            .since_last_ack
            .iter()
            .copied()
            .filter(|seq| !self.model.in_flight.contains_key(seq))
            .collect();
        for seq in settled {
            self.since_last_ack.remove(&seq);
            if flights_before[&seq].silence_counts() {
                self.silent_since_last_ack += 1;
            }
        }
        if self.silent_since_last_ack >= self.model.max_missed {
            prop_assert_eq!(
                self.real.state(),
                PeerState::Unreachable,
                "step {}",
                self.steps
            );
        }
        Ok(())
    }
}

/// Straight from the rule, without the model: each transition raises exactly
/// one event, a restart exactly one, and the epoch moves only with an
/// accepted reply.
fn check_transition(
    before: &Snapshot,
    after: &Snapshot,
    events: &[Change],
    verdict: Option<ReplyVerdict>,
) -> Result<(), TestCaseError> {
    let count = |e: &Change| events.iter().filter(|c| *c == e).count();
    let became = |s: PeerState| usize::from(before.state != s && after.state == s);
    prop_assert_eq!(count(&Change::Up), became(PeerState::Alive), "{:?}", events);
    prop_assert_eq!(
        count(&Change::Down),
        became(PeerState::Unreachable),
        "{:?}",
        events
    );
    let restarts: Vec<Change> = events
        .iter()
        .filter(|c| matches!(c, Change::Restarted { .. }))
        .cloned()
        .collect();
    match (before.epoch, after.epoch) {
        (Some(previous), Some(current)) if current > previous => {
            prop_assert_eq!(restarts, vec![Change::Restarted { previous, current }]);
        }
        _ => prop_assert!(restarts.is_empty(), "{:?}", events),
    }
    if after.epoch != before.epoch {
        prop_assert_eq!(verdict, Some(ReplyVerdict::Accepted), "the epoch moved");
    }
    if after.acked != before.acked {
        prop_assert_eq!(verdict, Some(ReplyVerdict::Accepted), "an ack was counted");
    }
    let mismatches = events
        .iter()
        .filter(|c| matches!(c, Change::IdentityMismatch { .. }))
        .count();
    prop_assert!(mismatches <= 1, "{:?}", events);
    if mismatches == 1 {
        prop_assert_eq!(verdict, Some(ReplyVerdict::WrongIdentity));
    }
    Ok(())
}

/// Something that answers a dead peer's heartbeats: none of it is a valid
/// reply.
#[derive(Debug, Clone, Copy)]
enum Noise {
    Nothing,
    /// A reply, with any identity and epoch, to a number not in flight.
    Forged(u64, Option<usize>, u64),
    /// Another node answers the newest heartbeat.
    Impostor(usize),
    /// An older incarnation of the peer answers the newest heartbeat.
    Stale,
}

fn noise() -> impl Strategy<Value = Noise> {
    prop_oneof![
        4 => Just(Noise::Nothing),
        3 => (
            prop_oneof![Just(0), Just(u64::MAX), 1u64..64, any::<u64>()],
            prop::option::of(0..IMPOSTORS.len()),
            prop_oneof![Just(u64::MAX), any::<u64>()],
        )
            .prop_map(|(seq, who, epoch)| Noise::Forged(seq, who, epoch)),
        1 => (0..IMPOSTORS.len()).prop_map(Noise::Impostor),
        1 => Just(Noise::Stale),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The model and the state machine agree after every step, whatever
    /// the calls, and every step satisfies the rule's invariants.
    #[test]
    fn the_state_machine_follows_the_rule_step_by_step(
        config in config(),
        known_epoch in known_epoch(),
        ops in prop::collection::vec(op(), 1..150),
    ) {
        let mut h = Harness::new(config, known_epoch);
        for op in &ops {
            h.step(op)?;
        }
    }

    /// Whatever happened before, once the peer stops answering validly (it
    /// died; impostors, stale incarnations and forgers may still answer),
    /// a driver that sends a heartbeat every period and expires each at
    /// its timeout sees exactly one Down, no later than
    /// `max_missed x frequency + timeout` after the last valid reply.
    #[test]
    fn a_dead_peer_is_unreachable_within_the_detection_bound(
        config in config(),
        known_epoch in known_epoch(),
        history in prop::collection::vec(op(), 0..80),
        rtt_eighths in 0u32..=8,
        noise in prop::collection::vec(noise(), 1..16),
    ) {
        let mut h = Harness::new(config, known_epoch);
        for op in &history {
            h.step(op)?;
        }
        // The last valid reply: the newest heartbeat, answered in time.
        h.step(&Op::Send(vec![(Path::Datagram, false)]))?;
        let last_sent = h.now;
        h.step(&Op::Advance(Step::TimeoutEighths(rtt_eighths)))?;
        let valid = Op::Reply {
            target: Target::Newest,
            via: Via::Taken(0),
            impostor: None,
            epoch: EpochChoice::Same,
        };
        prop_assert_eq!(h.step(&valid)?, Some(ReplyVerdict::Accepted));
        let last_valid_reply = h.now;
        let bound = last_valid_reply + config.detection_bound();
        let events_before = h.events.len();

        let mut next_send = last_sent + config.heartbeat_freq;
        let mut noise = noise.iter().cycle();
        while h.real.state() != PeerState::Unreachable && h.now <= bound {
            let due = h
                .model
                .in_flight
                .iter()
                .map(|(seq, hb)| (hb.sent_at + config.timeout, *seq))
                .min();
            match due {
                // Timeouts before sends due at the same instant.
                Some((deadline, seq)) if deadline <= next_send => {
                    h.now = h.now.max(deadline);
                    h.step(&Op::Expire(Target::Number(seq)))?;
                }
                _ => {
                    h.now = h.now.max(next_send);
                    next_send += config.heartbeat_freq;
                    h.step(&Op::Send(vec![(Path::Datagram, false)]))?;
                    let newest = Target::Newest;
                    let reply = |target, impostor, epoch| Op::Reply {
                        target,
                        via: Via::Taken(0),
                        impostor,
                        epoch,
                    };
                    match *noise.next().expect("cycles") {
                        Noise::Nothing => {}
                        Noise::Forged(seq, who, epoch) => {
                            if !h.model.in_flight.contains_key(&seq) {
                                let v = h.step(&reply(Target::Number(seq), who, EpochChoice::Any(epoch)))?;
                                prop_assert_eq!(v, Some(ReplyVerdict::NotInFlight));
                            }
                        }
                        Noise::Impostor(who) => {
                            let v = h.step(&reply(newest, Some(who), EpochChoice::Same))?;
                            prop_assert_eq!(v, Some(ReplyVerdict::WrongIdentity));
                        }
                        Noise::Stale => {
                            if h.model.epoch.is_some_and(|e| e > 0) {
                                let v = h.step(&reply(newest, None, EpochChoice::Lower))?;
                                prop_assert_eq!(v, Some(ReplyVerdict::StaleEpoch));
                            }
                        }
                    }
                }
            }
        }
        prop_assert_eq!(h.real.state(), PeerState::Unreachable);
        prop_assert!(
            h.now <= bound,
            "convicted {:?} after the last valid reply, bound {:?}",
            h.now - last_valid_reply,
            config.detection_bound()
        );
        let silence = &h.events[events_before..];
        let downs = silence.iter().filter(|c| **c == Change::Down).count();
        prop_assert_eq!(downs, 1, "{:?}", silence);
        prop_assert!(!silence.contains(&Change::Up), "{:?}", silence);
        prop_assert_eq!(h.real.heartbeats_acked(), h.model.acked, "no ack after the last");
    }
}
