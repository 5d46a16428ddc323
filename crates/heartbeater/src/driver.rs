//! The driver: the one task that heartbeats a node's peers.
//!
//! Who owns what: while the node runs, this task alone owns the
//! [`PeerTable`], the datagram path (socket reads, each peer's path, the
//! probe-token secret, the cluster keyring) and the gRPC channel pool, and
//! nothing else holds a lock on any of them. Registrations, listings, counts
//! and keyring changes reach it only as [`Command`]s over a bounded channel,
//! each answered on a oneshot, while events and learned epochs leave it
//! through the [`EventFanout`]. Before `start` and after `stop` the table sits
//! parked in the node ([`crate::node`]), which hands it to the driver at start
//! and takes it back from the driver's return value at stop.
//!
//! Its loop is fair: at every wake-up it sends the heartbeats that are due
//! first, then reads a bounded batch of replies (as many as it just sent,
//! plus [`RECEIVE_BATCH`]), then applies the timeouts, then takes at most
//! [`COMMAND_BATCH`] commands. So no inbound load, however heavy, holds back
//! a heartbeat or a timeout by more than one batch, no overloaded schedule
//! keeps replies waiting in the socket until they are late, and a reply
//! already received is never counted as a miss.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use heartbeater_core::datagram::{Datagram, DecodeError, Kind, MAX_DATAGRAM};
use heartbeater_core::{
    Expired, Keyring, Path, PauseGuard, PauseThreshold, PeerSpec, PeerStatus, PeerTable, Probe,
    ProbeId, ProbeSealer, Reply, ReplyVerdict, StateCounts, Upsert,
};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::counters::Counters;
use crate::datagram_path::{DatagramPath, PongOutcome, Resolving};
use crate::event::PeerEvent;
use crate::fanout::{EventFanout, LearnedEpochs};
use crate::grpc_pool::{GrpcCall, GrpcPool};
use crate::lateness::LatenessHistogram;
use crate::log_limit::LogLimiter;
use crate::responder::Responder;

/// Datagrams read per wake-up before the timers are looked at again.
pub(crate) const RECEIVE_BATCH: usize = 64;
/// Commands taken per wake-up.
pub(crate) const COMMAND_BATCH: usize = 64;
/// Commands waiting for the driver before senders wait too.
const COMMAND_QUEUE: usize = 256;

/// A change to the table.
pub(crate) enum TableOp {
    Upsert(PeerSpec),
    Remove(String),
}

/// What the rest of the node asks of the driver.
pub(crate) enum Command {
    /// Applies the ops in order; answers, per op, whether the peer was
    /// registered before.
    Apply {
        ops: Vec<TableOp>,
        reply: oneshot::Sender<Vec<bool>>,
    },
    /// Whether each id is registered, and how many peers are.
    Known {
        ids: Vec<String>,
        reply: oneshot::Sender<(Vec<bool>, usize)>,
    },
    Statuses(oneshot::Sender<Vec<PeerStatus>>),
    /// One page of statuses after an id, and whether more follow.
    Page {
        after: Option<String>,
        limit: usize,
        reply: oneshot::Sender<(Vec<PeerStatus>, bool)>,
    },
    Counts(oneshot::Sender<StateCounts>),
    SetKeyring {
        keyring: Option<Keyring>,
        reply: oneshot::Sender<()>,
    },
}

/// How long the driver sleeps when nothing is scheduled (it wakes earlier
/// for anything else).
const IDLE: Duration = Duration::from_secs(3600);

/// What the driver's one timer is set to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Armed {
    /// It fired and was not set again.
    Fired,
    /// The earliest deadline of the table.
    At(Instant),
    /// Nothing scheduled: [`IDLE`] from when it was set.
    Idle,
}

/// The driver is gone: the node stopped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stopped;

/// Talks to the driver.
#[derive(Clone)]
pub(crate) struct DriverHandle {
    tx: mpsc::Sender<Command>,
}

impl DriverHandle {
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }

    pub(crate) async fn apply(&self, ops: Vec<TableOp>) -> Result<Vec<bool>, Stopped> {
        self.request(|reply| Command::Apply { ops, reply }).await
    }

    pub(crate) async fn known(&self, ids: Vec<String>) -> Result<(Vec<bool>, usize), Stopped> {
        self.request(|reply| Command::Known { ids, reply }).await
    }

    pub(crate) async fn statuses(&self) -> Result<Vec<PeerStatus>, Stopped> {
        self.request(Command::Statuses).await
    }

    pub(crate) async fn page(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<PeerStatus>, bool), Stopped> {
        self.request(|reply| Command::Page {
            after,
            limit,
            reply,
        })
        .await
    }

    pub(crate) async fn counts(&self) -> Result<StateCounts, Stopped> {
        self.request(Command::Counts).await
    }

    pub(crate) async fn set_keyring(&self, keyring: Option<Keyring>) -> Result<(), Stopped> {
        self.request(|reply| Command::SetKeyring { keyring, reply })
            .await
    }
}

/// How the driver runs: who this node is, and what it heartbeats with.
pub(crate) struct DriverConfig {
    pub(crate) identity: String,
    pub(crate) epoch: u64,
    /// The node's datagram socket, when UDP is on.
    pub(crate) udp: Option<Arc<UdpSocket>>,
    /// Seals probe ids into tokens; random per run.
    pub(crate) token_secret: [u8; 32],
    pub(crate) keyring: Option<Keyring>,
    /// TLS and token for heartbeats over gRPC.
    pub(crate) outbound: crate::outbound::Outbound,
    /// The local-pause guard's threshold.
    pub(crate) pause: PauseThreshold,
}

/// A driver not yet running: the receiving end of the commands, and the
/// outlets it will publish to.
pub(crate) struct Driver {
    commands: mpsc::Receiver<Command>,
    fanout: EventFanout,
    counters: Arc<Counters>,
    lateness: Arc<LatenessHistogram>,
}

impl Driver {
    /// A driver, its handle, the sender to subscribe to its events, and the
    /// receiver of the epochs it learns.
    pub(crate) fn new(
        counters: Arc<Counters>,
        lateness: Arc<LatenessHistogram>,
    ) -> (
        Self,
        DriverHandle,
        broadcast::Sender<PeerEvent>,
        LearnedEpochs,
    ) {
        let (tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let (fanout, epochs) = EventFanout::new();
        let events = fanout.events();
        let driver = Self {
            commands,
            fanout,
            counters,
            lateness,
        };
        (driver, DriverHandle { tx }, events, epochs)
    }

    /// Heartbeats the peers of `table` until `shutdown` turns true or every
    /// handle is dropped; returns the table, for the stopped node to report
    /// from.
    pub(crate) async fn run(
        self,
        table: PeerTable,
        config: DriverConfig,
        mut shutdown: watch::Receiver<bool>,
    ) -> PeerTable {
        let grpc_allowed = config.keyring.is_none() || config.udp.is_none();
        let sealer = ProbeSealer::new(config.token_secret);
        let path = config.udp.map(|socket| {
            DatagramPath::new(
                socket,
                config.identity.clone(),
                config.epoch,
                sealer,
                config.keyring,
            )
        });
        let Driver {
            mut commands,
            fanout,
            counters,
            lateness,
        } = self;
        let mut state = Loop {
            table,
            fanout,
            counters,
            lateness,
            grpc: GrpcPool::new(config.identity.clone(), config.epoch, config.outbound),
            responder: Responder::new(config.identity, config.epoch),
            path,
            grpc_allowed,
            calls: FuturesUnordered::new(),
            resolving: FuturesUnordered::new(),
            due: Vec::new(),
            expired: Vec::new(),
            buf: vec![0; MAX_DATAGRAM + 1],
            rejected_log: LogLimiter::default(),
            guard: PauseGuard::new(config.pause),
            pause_log: LogLimiter::default(),
        };
        // One timer, re-armed only when the earliest deadline moves: a pong
        // must not cost a timer registration. A timer that fired must be
        // re-armed before it is polled again (an elapsed sleep stays ready,
        // and would spin the loop), hence `Armed::Fired`.
        // The socket never changes: one handle for the whole run, not a
        // clone per wake-up.
        let socket = state.path.as_ref().map(|p| p.socket.clone());
        let sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(sleep);
        let mut armed = Armed::Fired;
        loop {
            // The guard needs a wake-up every half threshold, work or not:
            // a pause shows as a wake-up later than that.
            let next = match (state.table.next_deadline(), state.guard.next_check()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let current = match (next, armed) {
                (Some(t), Armed::At(a)) => t == a,
                (None, Armed::Idle) => true,
                _ => false,
            };
            if !current {
                armed = match next {
                    Some(t) => {
                        sleep.as_mut().reset(t.into());
                        Armed::At(t)
                    }
                    None => {
                        sleep.as_mut().reset((now() + IDLE).into());
                        Armed::Idle
                    }
                };
            }
            let readable = async {
                match &socket {
                    Some(s) => s.readable().await,
                    None => std::future::pending().await,
                }
            };
            // Waits for anything to do; stopping comes first.
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                () = &mut sleep => armed = Armed::Fired,
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    state.on_command(command);
                }
                Some(outcome) = state.calls.next(), if !state.calls.is_empty() => {
                    state.on_call(outcome);
                }
                Some((key, addr)) = state.resolving.next(), if !state.resolving.is_empty() => {
                    if let Some(p) = state.path.as_mut() {
                        p.resolved(key, addr);
                    }
                }
                Ok(()) = readable => {}
            }
            // Then, whatever woke it, every wake-up does a bounded share of
            // each kind of work, timers first: a flood of datagrams cannot
            // hold back a heartbeat or a timeout, and timers that are always
            // due (more heartbeats than the machine can send) cannot hold
            // back the replies or the node's requests.
            let t = now();
            // Before anything is judged: if the driver itself was not
            // running, nothing in flight across that gap may count.
            state.check_pause(t);
            let due = state.table.next_deadline().is_some_and(|d| d <= t);
            let sent = if due { state.send_due(t) } else { 0 };
            // As many replies as heartbeats just went out, and a batch more:
            // an overloaded schedule still reads the replies to what it
            // sends, and a flood gets one batch per wake-up. Read before the
            // timeouts are applied: a reply already waiting is not a miss.
            let batch = RECEIVE_BATCH.saturating_add(sent);
            for _ in 0..batch {
                match state.calls.next().now_or_never() {
                    Some(Some(outcome)) => state.on_call(outcome),
                    _ => break,
                }
            }
            state.receive(now(), batch);
            if due {
                state.expire(now());
            }
            for _ in 1..COMMAND_BATCH {
                match commands.try_recv() {
                    Ok(command) => state.on_command(command),
                    Err(_) => break,
                }
            }
            state.fanout.publish(&mut state.table, &state.counters.work);
            state.counters.awareness.store(
                u64::from(state.table.awareness_score()),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        state.fanout.publish(&mut state.table, &state.counters.work);
        state.table
    }
}

/// Applies `ops` to `table` in order; says, per op, whether the peer was
/// registered before. The driver's answer to [`Command::Apply`], and what a
/// node not started yet does to its parked table.
pub(crate) fn apply(table: &mut PeerTable, ops: Vec<TableOp>, t: Instant) -> Vec<bool> {
    ops.into_iter()
        .map(|op| match op {
            TableOp::Upsert(spec) => !matches!(table.upsert(spec, t), Upsert::Inserted(_)),
            TableOp::Remove(id) => table.remove(&id),
        })
        .collect()
}

/// Whether each of `ids` is registered in `table`, and how many peers are.
pub(crate) fn known(table: &PeerTable, ids: &[String]) -> (Vec<bool>, usize) {
    let flags = ids.iter().map(|id| table.key_of(id).is_some()).collect();
    (flags, table.len())
}

pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The driver's running state; one owner, no locks.
struct Loop {
    table: PeerTable,
    fanout: EventFanout,
    counters: Arc<Counters>,
    lateness: Arc<LatenessHistogram>,
    grpc: GrpcPool,
    responder: Responder,
    path: Option<DatagramPath>,
    grpc_allowed: bool,
    calls: FuturesUnordered<GrpcCall>,
    resolving: FuturesUnordered<Resolving>,
    due: Vec<Probe>,
    expired: Vec<Expired>,
    buf: Vec<u8>,
    rejected_log: LogLimiter,
    guard: PauseGuard,
    pause_log: LogLimiter,
}

impl Loop {
    fn on_command(&mut self, command: Command) {
        // A dropped reply receiver is a caller that gave up: nothing to do.
        match command {
            Command::Apply { ops, reply } => {
                let results = apply(&mut self.table, ops, now());
                self.grpc
                    .retain_used(self.table.len(), self.table.addresses());
                let _ = reply.send(results);
            }
            Command::Known { ids, reply } => {
                let _ = reply.send(known(&self.table, &ids));
            }
            Command::Statuses(reply) => {
                let _ = reply.send(self.table.statuses());
            }
            Command::Page {
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(self.table.statuses_page(after.as_deref(), limit));
            }
            Command::Counts(reply) => {
                let _ = reply.send(self.table.state_counts());
            }
            Command::SetKeyring { keyring, reply } => {
                match self.path.as_mut() {
                    Some(p) => {
                        self.grpc_allowed = keyring.is_none();
                        p.set_keyring(keyring);
                    }
                    None => tracing::debug!("no datagram path: the keyring is not used"),
                }
                let _ = reply.send(());
            }
        }
    }

    /// Expires what timed out, then sends what is due.
    /// Applies the outcome of a heartbeat sent over gRPC.
    fn on_call(&mut self, outcome: crate::grpc_pool::GrpcOutcome) {
        let t = now();
        match outcome.reply {
            Some((id, epoch)) => {
                let verdict = self.table.on_reply(
                    outcome.id,
                    Path::Grpc,
                    t,
                    Reply {
                        responder_id: &id,
                        responder_epoch: epoch,
                    },
                );
                count_reply(&self.counters, &self.table, verdict, Path::Grpc, outcome.id);
            }
            None => self.table.on_path_failed(outcome.id, Path::Grpc, t),
        }
    }

    /// Settles the heartbeats whose timeout passed by `t` as unanswered.
    fn expire(&mut self, t: Instant) {
        self.table.poll_expired(t, &mut self.expired);
        for e in self.expired.drain(..) {
            for path in [Path::Datagram, Path::Grpc] {
                if e.paths.contains(path) {
                    self.counters.work.timed_out(path);
                }
            }
            if let Some(p) = self.path.as_mut() {
                p.on_expired(&e);
            }
        }
    }

    /// Hands the wake-up at `t` to the pause guard; after a pause, voids
    /// every heartbeat in flight across it.
    fn check_pause(&mut self, t: Instant) {
        let Some(pause) = self.guard.observe(t, self.table.shortest_period()) else {
            return;
        };
        let voided = self.table.on_local_pause(t);
        self.counters.record_pause(pause.length(), voided);
        if let Some(suppressed) = self.pause_log.due() {
            tracing::warn!(
                paused_ms = pause.length().as_millis() as u64,
                threshold_ms = pause.threshold.as_millis() as u64,
                voided_heartbeats = voided,
                similar_suppressed = suppressed,
                "this node did not run for longer than its pause threshold (stopped, starved or \
                 frozen); the heartbeats in flight across the pause are voided and no peer is \
                 judged on it"
            );
        }
    }

    /// Sends the heartbeats due by `t`; returns how many.
    fn send_due(&mut self, t: Instant) -> usize {
        self.table.poll_due(t, &mut self.due);
        let mut due = std::mem::take(&mut self.due);
        let sent = due.len();
        for probe in due.drain(..) {
            self.lateness
                .record(probe.sent_at.saturating_duration_since(probe.due));
            self.send(&probe);
        }
        self.due = due;
        sent
    }

    fn send(&mut self, probe: &Probe) {
        let Some(spec) = self.table.spec(probe.id.peer()) else {
            return;
        };
        let sent = match self.path.as_mut() {
            Some(p) => p.send(probe, spec, self.grpc_allowed, &mut self.resolving),
            None => crate::datagram_path::Sent::GRPC_ONLY,
        };
        let call = if sent.grpc && self.grpc_allowed {
            self.grpc
                .call(&spec.host, spec.port, probe.id, spec.detector.timeout)
        } else {
            None
        };
        if let Some(trial) = sent.datagram {
            self.table.mark_sent(probe.id, Path::Datagram, trial);
            self.counters.work.sent(Path::Datagram);
        }
        if let Some(call) = call {
            self.table.mark_sent(probe.id, Path::Grpc, false);
            self.counters.work.sent(Path::Grpc);
            self.calls.push(call);
        }
        // A heartbeat that left on no path at all stays in flight and is a
        // miss at its timeout, like one that got no answer.
    }

    /// Reads up to `limit` datagrams: pings are answered, pongs judged.
    fn receive(&mut self, t: Instant, limit: usize) {
        let Some(path) = self.path.as_mut() else {
            return;
        };
        let socket = path.socket.clone();
        for _ in 0..limit {
            let (n, from) = match socket.try_recv_from(&mut self.buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP errors of earlier sends surface here on some
                    // systems; they say nothing about this socket.
                    tracing::trace!(error = %e, "udp receive");
                    continue;
                }
            };
            let datagram = match Datagram::open(&self.buf[..n], path.keyring()) {
                Ok(d) => d,
                Err(DecodeError::Auth(e)) => {
                    Counters::add(&self.counters.auth_failed);
                    if let Some(suppressed) = self.rejected_log.due() {
                        let peer = path.peer_at(from).and_then(|k| self.table.spec(k));
                        warn_rejected(from, peer.map(|s| &*s.peer_id), &e, suppressed);
                    }
                    continue;
                }
                Err(_) => {
                    Counters::add(&self.counters.malformed);
                    continue;
                }
            };
            match datagram.kind {
                Kind::Ping => self.responder.answer(
                    &datagram,
                    n,
                    from,
                    path.keyring(),
                    &socket,
                    &self.counters,
                ),
                Kind::Pong => {
                    let (outcome, left_both) = path.on_pong(&datagram, t, &mut self.table);
                    match outcome {
                        PongOutcome::Forged => Counters::add(&self.counters.forged_tokens),
                        PongOutcome::Judged(v, _) if !v.matched() => {
                            Counters::add(&self.counters.unmatched_pongs)
                        }
                        PongOutcome::Judged(v, id) => {
                            count_reply(&self.counters, &self.table, v, Path::Datagram, id)
                        }
                    }
                    if let Some(key) = left_both {
                        if let Some(spec) = self.table.spec(key) {
                            self.grpc.close(&spec.host, spec.port);
                        }
                    }
                }
            }
        }
    }
}

/// Counts an acknowledgement accepted for heartbeat `id`, with its RTT.
fn count_reply(
    counters: &Counters,
    table: &PeerTable,
    verdict: ReplyVerdict,
    path: Path,
    id: ProbeId,
) {
    if verdict == ReplyVerdict::Accepted {
        counters.work.acked(path, table.last_rtt(id.peer()));
    }
}

fn warn_rejected(
    from: SocketAddr,
    peer: Option<&str>,
    reason: &dyn std::fmt::Display,
    suppressed: u64,
) {
    match peer {
        Some(peer) => tracing::warn!(
            %from, peer, suppressed,
            "datagram rejected: {reason}; this peer's heartbeats cannot be verified, so it will be reported unreachable (check both nodes' cluster keys)"
        ),
        None => tracing::warn!(%from, suppressed, "datagram rejected: {reason}"),
    }
}
