//! `PeerLiveness` against a reference model of the rule in the README and
//! docs/PROTOCOL.md ("Liveness, exactly"), driven by arbitrary sequences of
//! sends, replies (genuine, forged, late, from the wrong identity, with any
//! epoch, for any sequence number), path failures, expiries and clock steps.
//!
//! The model is written for clarity, not speed: a map of the heartbeats in
//! flight and the counters the rule names. After every step the state
//! machine must agree with it on every verdict, every event (exactly once)
//! and every figure it reports.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use heartbeater_core::{
    Change, DetectorConfig, Path, PeerLiveness, PeerState, Reply, ReplyVerdict, PROBE_WINDOW,
};
use proptest::prelude::*;

const ID: &str = "the-peer";

#[derive(Debug, Clone)]
struct InFlight {
    sent_at: Instant,
    datagram: bool,
    grpc: bool,
    trial: bool,
}

/// The rule, plainly.
#[derive(Debug)]
struct Model {
    timeout: Duration,
    max_missed: u32,
    next_seq: u64,
    in_flight: BTreeMap<u64, InFlight>,
    last_acked: u64,
    missed: u32,
    state: PeerState,
    epoch: Option<u64>,
    sent: u64,
    acked: u64,
    last_rtt: Option<Duration>,
    mismatch_reported: bool,
}

impl Model {
    fn new(config: DetectorConfig, epoch: Option<u64>) -> Self {
        Self {
            timeout: config.timeout,
            max_missed: config.max_missed.get(),
            next_seq: 1,
            in_flight: BTreeMap::new(),
            last_acked: 0,
            missed: 0,
            state: PeerState::Unknown,
            epoch,
            sent: 0,
            acked: 0,
            last_rtt: None,
            mismatch_reported: false,
        }
    }

    /// A miss, unless a later heartbeat was already acknowledged.
    fn count_miss(&mut self, seq: u64, out: &mut Vec<Change>) -> bool {
        if seq <= self.last_acked {
            return false;
        }
        self.missed += 1;
        if self.state != PeerState::Unreachable && self.missed >= self.max_missed {
            self.state = PeerState::Unreachable;
            out.push(Change::Down);
        }
        true
    }

    /// A heartbeat settled without a reply: a trial's silence does not count.
    fn no_reply(&mut self, seq: u64, probe: &InFlight, out: &mut Vec<Change>) -> bool {
        !probe.trial && self.count_miss(seq, out)
    }

    fn send(&mut self, now: Instant, out: &mut Vec<Change>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.sent += 1;
        let displaced = seq.saturating_sub(PROBE_WINDOW as u64);
        if let Some(old) = self.in_flight.remove(&displaced) {
            self.no_reply(displaced, &old, out);
        }
        self.in_flight.insert(
            seq,
            InFlight {
                sent_at: now,
                datagram: false,
                grpc: false,
                trial: false,
            },
        );
        seq
    }

    fn mark(&mut self, seq: u64, path: Path, trial: bool) -> bool {
        let Some(p) = self.in_flight.get_mut(&seq) else {
            return false;
        };
        let first = !p.datagram && !p.grpc;
        if trial && first {
            p.trial = true;
        } else if !trial {
            p.trial = false;
        }
        match path {
            Path::Datagram => p.datagram = true,
            Path::Grpc => p.grpc = true,
        }
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
        let Some(p) = self.in_flight.get(&seq) else {
            return ReplyVerdict::NotInFlight;
        };
        let on_path = match path {
            Path::Datagram => p.datagram,
            Path::Grpc => p.grpc,
        };
        if !on_path {
            return ReplyVerdict::WrongPath;
        }
        let p = self.in_flight.remove(&seq).expect("present");
        let rtt = now - p.sent_at;
        if rtt > self.timeout {
            self.no_reply(seq, &p, out);
            return ReplyVerdict::Late;
        }
        if identity != ID {
            if !self.mismatch_reported {
                self.mismatch_reported = true;
                out.push(Change::IdentityMismatch {
                    observed: identity.to_owned(),
                });
            }
            self.count_miss(seq, out);
            return ReplyVerdict::WrongIdentity;
        }
        self.mismatch_reported = false;
        if matches!(self.epoch, Some(known) if epoch < known) {
            self.count_miss(seq, out);
            return ReplyVerdict::StaleEpoch;
        }
        self.missed = 0;
        self.last_acked = self.last_acked.max(seq);
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
        let Some(p) = self.in_flight.get_mut(&seq) else {
            return;
        };
        match path {
            Path::Datagram => p.datagram = false,
            Path::Grpc => p.grpc = false,
        }
        if !p.datagram && !p.grpc {
            let p = self.in_flight.remove(&seq).expect("present");
            self.no_reply(seq, &p, out);
        }
    }

    fn expire(&mut self, seq: u64, out: &mut Vec<Change>) -> Option<bool> {
        let p = self.in_flight.remove(&seq)?;
        Some(self.no_reply(seq, &p, out))
    }
}

/// Which heartbeat an operation names.
#[derive(Debug, Clone)]
enum Target {
    /// The `n`-th (modulo) of those in flight.
    InFlight(usize),
    /// One sent earlier, whether still in flight or not.
    Sent(u64),
    /// Any number at all: never issued, far in the future, the extremes.
    Forged(u64),
}

#[derive(Debug, Clone)]
enum Op {
    Send {
        datagram: Option<bool>,
        grpc: bool,
    },
    Reply {
        target: Target,
        grpc: bool,
        right_identity: bool,
        epoch: EpochChoice,
    },
    PathFailed {
        target: Target,
        grpc: bool,
    },
    Expire(Target),
    Advance(u64),
}

#[derive(Debug, Clone, Copy)]
enum EpochChoice {
    Same,
    Higher,
    Lower,
    Max,
    Zero,
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        4 => any::<usize>().prop_map(Target::InFlight),
        2 => (1u64..40).prop_map(Target::Sent),
        1 => prop_oneof![
            Just(0u64),
            Just(u64::MAX),
            Just(u64::MAX - 1),
            any::<u64>()
        ]
        .prop_map(Target::Forged),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (prop::option::of(any::<bool>()), any::<bool>())
            .prop_map(|(datagram, grpc)| Op::Send { datagram, grpc }),
        5 => (
            target(),
            any::<bool>(),
            prop::bool::weighted(0.85),
            prop_oneof![
                6 => Just(EpochChoice::Same),
                1 => Just(EpochChoice::Higher),
                1 => Just(EpochChoice::Lower),
                1 => Just(EpochChoice::Max),
                1 => Just(EpochChoice::Zero),
            ],
        )
            .prop_map(|(target, grpc, right_identity, epoch)| Op::Reply {
                target,
                grpc,
                right_identity,
                epoch
            }),
        1 => (target(), any::<bool>()).prop_map(|(target, grpc)| Op::PathFailed { target, grpc }),
        2 => target().prop_map(Op::Expire),
        3 => prop_oneof![
            4 => 0u64..2_000,
            2 => 0u64..500_000,
            1 => 0u64..10_000_000_000,
        ]
        .prop_map(Op::Advance),
    ]
}

fn config() -> impl Strategy<Value = DetectorConfig> {
    (1i64..200, 1u32..6)
        .prop_flat_map(|(freq, max)| (Just(freq), 1i64..=7 * freq, Just(max)))
        .prop_map(|(freq, timeout, max)| {
            DetectorConfig::from_millis(freq, Some(timeout), Some(max)).expect("valid")
        })
}

fn path(grpc: bool) -> Path {
    if grpc {
        Path::Grpc
    } else {
        Path::Datagram
    }
}

fn resolve(model: &Model, target: &Target) -> u64 {
    match *target {
        Target::InFlight(n) => {
            let seqs: Vec<u64> = model.in_flight.keys().copied().collect();
            if seqs.is_empty() {
                model.next_seq
            } else {
                seqs[n % seqs.len()]
            }
        }
        Target::Sent(back) => model.next_seq.saturating_sub(back),
        Target::Forged(seq) => seq,
    }
}

fn epoch_of(model: &Model, choice: EpochChoice) -> u64 {
    let known = model.epoch.unwrap_or(1);
    match choice {
        EpochChoice::Same => known,
        EpochChoice::Higher => known.saturating_add(1),
        EpochChoice::Lower => known.saturating_sub(1),
        EpochChoice::Max => u64::MAX,
        EpochChoice::Zero => 0,
    }
}

fn assert_agree(real: &PeerLiveness, model: &Model, step: usize) {
    let context = || format!("after step {step}: {model:?}");
    assert_eq!(real.state(), model.state, "state {}", context());
    assert_eq!(real.epoch(), model.epoch, "epoch {}", context());
    assert_eq!(real.missed(), model.missed, "missed {}", context());
    assert_eq!(real.heartbeats_sent(), model.sent, "sent {}", context());
    assert_eq!(real.heartbeats_acked(), model.acked, "acked {}", context());
    assert_eq!(real.last_rtt(), model.last_rtt, "rtt {}", context());
    assert_eq!(real.in_flight(), model.in_flight.len(), "{}", context());
    for seq in model.in_flight.keys() {
        assert!(real.is_in_flight(*seq), "{seq} in flight {}", context());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn the_state_machine_follows_the_rule_step_by_step(
        config in config(),
        known_epoch in prop::option::of(1u64..5),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        let mut now = Instant::now();
        let mut real = PeerLiveness::new(config, known_epoch);
        let mut model = Model::new(config, known_epoch);
        for (step, op) in ops.iter().enumerate() {
            let mut got = Vec::new();
            let mut want = Vec::new();
            match op {
                Op::Send { datagram, grpc } => {
                    let seq = real.on_send(now, &mut got);
                    prop_assert_eq!(seq, model.send(now, &mut want));
                    if let Some(trial) = datagram {
                        prop_assert_eq!(
                            real.mark_sent(seq, Path::Datagram, *trial),
                            model.mark(seq, Path::Datagram, *trial)
                        );
                    }
                    if *grpc {
                        prop_assert_eq!(
                            real.mark_sent(seq, Path::Grpc, false),
                            model.mark(seq, Path::Grpc, false)
                        );
                    }
                }
                Op::Reply { target, grpc, right_identity, epoch } => {
                    let seq = resolve(&model, target);
                    let epoch = epoch_of(&model, *epoch);
                    let identity = if *right_identity { ID } else { "an-impostor" };
                    let before = (model.state, model.epoch, model.acked);
                    let verdict = real.on_reply(seq, path(*grpc), now, ID, Reply {
                        responder_id: identity,
                        responder_epoch: epoch,
                    }, &mut got);
                    let expected = model.reply(seq, path(*grpc), now, identity, epoch, &mut want);
                    prop_assert_eq!(verdict, expected, "step {}: seq {}", step, seq);
                    if !verdict.matched() {
                        // A reply to nothing in flight changes nothing at all.
                        prop_assert!(got.is_empty());
                        prop_assert_eq!(before, (real.state(), real.epoch(), real.heartbeats_acked()));
                    }
                    if verdict != ReplyVerdict::Accepted {
                        prop_assert_eq!(before.1, real.epoch(), "only an accepted reply moves the epoch");
                    }
                }
                Op::PathFailed { target, grpc } => {
                    let seq = resolve(&model, target);
                    real.on_path_failed(seq, path(*grpc), now, &mut got);
                    model.path_failed(seq, path(*grpc), &mut want);
                }
                Op::Expire(target) => {
                    let seq = resolve(&model, target);
                    let counted = real.on_expired(seq, now, &mut got).map(|(_, c)| c);
                    prop_assert_eq!(counted, model.expire(seq, &mut want));
                }
                Op::Advance(micros) => now += Duration::from_micros(*micros),
            }
            // Every transition reported exactly once, in order.
            prop_assert_eq!(&got, &want, "events at step {} ({:?})", step, op);
            assert_agree(&real, &model, step);
        }
    }

    #[test]
    fn a_silent_peer_is_unreachable_within_the_bound_whatever_forgers_send(
        config in config(),
        ops in prop::collection::vec(op(), 0..60),
        forged in prop::collection::vec(any::<u64>(), 0..20),
    ) {
        // Any history first; then the peer falls silent. Heartbeats go out
        // every period and each expires at its timeout, while a forger
        // answers sequence numbers it cannot know are in flight (it
        // cannot: every genuine token is sealed). After `max_missed` such
        // heartbeats the peer is unreachable, announced by one Down at most.
        let mut now = Instant::now();
        let mut real = PeerLiveness::new(config, Some(1));
        let mut scratch = Vec::new();
        for op in &ops {
            match op {
                Op::Send { .. } => {
                    let seq = real.on_send(now, &mut scratch);
                    real.mark_sent(seq, Path::Datagram, false);
                }
                Op::Advance(micros) => now += Duration::from_micros(*micros),
                _ => {}
            }
        }
        // Settle whatever the history left in flight, as its timeouts would.
        now += config.timeout + Duration::from_micros(1);
        for seq in 0..=real.heartbeats_sent() + 1 {
            real.on_expired(seq, now, &mut scratch);
        }
        let was_unreachable = real.state() == PeerState::Unreachable;
        let mut out = Vec::new();
        for _ in 0..config.max_missed.get() {
            let seq = real.on_send(now, &mut out);
            real.mark_sent(seq, Path::Datagram, false);
            for f in &forged {
                if *f != seq {
                    let v = real.on_reply(*f, Path::Datagram, now, ID, Reply {
                        responder_id: ID,
                        responder_epoch: u64::MAX,
                    }, &mut out);
                    prop_assert_eq!(v, ReplyVerdict::NotInFlight);
                }
            }
            now += config.timeout;
            real.on_expired(seq, now, &mut out);
        }
        prop_assert_eq!(real.state(), PeerState::Unreachable);
        prop_assert_eq!(real.epoch(), Some(1), "no forged epoch believed");
        let downs = out.iter().filter(|c| **c == Change::Down).count();
        prop_assert_eq!(downs, usize::from(!was_unreachable));
    }
}
