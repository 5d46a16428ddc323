//! The driver: the one task that heartbeats a node's peers.
//!
//! Who owns what: while the node runs, this task alone owns the
//! [`PeerTable`], the datagram path (socket reads, each peer's path, the
//! probe-token secret, the cluster keyring) and the gRPC channel pool, and
//! nothing else holds a lock on any of them. Registrations and keyring
//! changes reach it only as [`Command`]s over a bounded channel, each
//! answered on a oneshot, while events and learned epochs leave it through
//! the [`EventFanout`]. Readers never reach it: at every wake-up it hands
//! the statuses that changed to a published view ([`crate::node::view`]),
//! which serves listings, snapshots and counts. Before `start` and after `stop` the table sits
//! parked in the node ([`crate::node`]), which hands it to the driver at start
//! and takes it back from the driver's return value at stop.
//!
//! Its loop is fair: at every wake-up it sends the heartbeats that are due
//! in chunks of [`SEND_CHUNK`], each followed by reading as many replies as
//! it sent plus [`RECEIVE_BATCH`], for at most [`SEND_BATCH`] heartbeats
//! and [`SEND_TIME`]; then it settles at most [`EXPIRE_BATCH`] timeouts,
//! takes at most [`COMMAND_BATCH`] commands, applies at most
//! [`APPLY_BATCH`] registry changes and publishes at most [`VIEW_BUDGET`]
//! changed statuses. Its own work per wake-up has a bound, so a late
//! wake-up (what the pause guard judges) comes from the machine, never from
//! what its callers asked, and no inbound load, however heavy, holds back a
//! heartbeat or a timeout by more than one batch.
//!
//! Its overload is its own trouble, never a peer's (docs/DETECTION.md,
//! "When the monitor is overloaded"): a reply is judged from when the
//! driver last found its socket empty ([`Looked`]), a timeout is settled
//! only up to there (at most [`MAX_DEFER`] back), a silence whose reply the
//! socket may have dropped is voided ([`receiver::Losses`]), and a
//! heartbeat the driver cannot carry (a full send buffer, [`GRPC_IN_FLIGHT`]
//! calls already out) is voided rather than moved to the dearer path.

pub(crate) mod clock;
pub(crate) mod datagram_path;
pub(crate) mod fanout;
pub(crate) mod grpc_pool;
pub(crate) mod indirect;
pub(crate) mod lateness;
pub(crate) mod outbound;
pub(crate) mod receiver;
pub(crate) mod relay;
pub(crate) mod responder;
pub mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use heartbeater_core::datagram::{Datagram, DecodeError, Kind};
use heartbeater_core::{
    Arrival, Expired, HeartbeatRate, Keyring, Path, PauseGuard, PauseThreshold, PeerSpec,
    PeerTable, Probe, ProbeId, ProbeSealer, Reply, ReplyVerdict, StatusChange, Upsert,
};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::driver::datagram_path::{DatagramPath, PongOutcome, Resolving, Unsent};
use crate::driver::fanout::{EventFanout, LearnedEpochs};
use crate::driver::grpc_pool::{GrpcCall, GrpcPool};
use crate::driver::lateness::LatenessHistogram;
use crate::driver::responder::Responder;
use crate::log_limit::LogLimiter;
use crate::node::counters::Counters;
use crate::node::event::PeerEvent;
use crate::node::view::PeerView;

/// Datagrams read per wake-up before the timers are looked at again.
pub(crate) const RECEIVE_BATCH: usize = 64;
/// Commands taken per wake-up.
pub(crate) const COMMAND_BATCH: usize = 64;
/// Registry changes applied per wake-up: a group commit of thousands of
/// registrations goes into the table over several wake-ups, with heartbeats
/// and replies handled in between.
pub(crate) const APPLY_BATCH: usize = 256;
/// Heartbeats sent per wake-up: what falls due at once beyond it (thousands
/// of peers registered together) goes out over the next wake-ups, which
/// follow at once, instead of holding one wake-up for the whole burst.
pub(crate) const SEND_BATCH: usize = 1024;
/// Heartbeats sent before the replies are read again, within a wake-up.
pub(crate) const SEND_CHUNK: usize = 64;
/// How long a wake-up may go on sending chunks: far below the shortest
/// pause threshold ([`heartbeater_core::pause::MIN_PAUSE_THRESHOLD`]), so
/// that the driver's own work never reads as a pause.
pub(crate) const SEND_TIME: Duration = Duration::from_millis(2);
/// Timeouts settled per wake-up.
pub(crate) const EXPIRE_BATCH: usize = 1024;
/// gRPC heartbeats in flight at once. Past it, a heartbeat that only gRPC
/// could carry is voided: the fallback path costs far more than a datagram,
/// and an overloaded node that moved ever more peers onto it would only
/// fall further behind (a metastable collapse) and convict peers on
/// heartbeats it could not carry.
pub(crate) const GRPC_IN_FLIGHT: usize = 512;
/// Changed statuses handed to the readers' view per wake-up: enough for
/// every heartbeat a wake-up sends and reads, small enough that a change
/// of every peer at once (a restart's restore, a pause) is spread over
/// wake-ups instead of stalling one.
pub(crate) const VIEW_BUDGET: usize = 4096;
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
    /// What the table holds of each id, and in all.
    Known {
        ids: Vec<String>,
        reply: oneshot::Sender<Known>,
    },
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

    pub(crate) async fn known(&self, ids: Vec<String>) -> Result<Known, Stopped> {
        self.request(|reply| Command::Known { ids, reply }).await
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
    pub(crate) outbound: crate::driver::outbound::Outbound,
    /// The local-pause guard's threshold.
    pub(crate) pause: PauseThreshold,
    /// Helpers asked per indirect probe round; 0 turns them off. Used only
    /// while the node has a cluster key.
    pub(crate) indirect_probes: usize,
    /// Seals the tokens of the pings this node sends for other monitors;
    /// random per run.
    pub(crate) relay_secret: [u8; 32],
    /// Where the statuses are published for readers; filled from the
    /// table before the driver starts.
    pub(crate) view: Arc<PeerView>,
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
        let mut table = table;
        table.set_indirect(indirect::usable(
            config.indirect_probes,
            config.keyring.as_ref(),
            config.udp.is_some(),
        ));
        let udp = config.udp.is_some();
        let seed = u64::from_le_bytes(
            config.relay_secret[..8]
                .try_into()
                .unwrap_or([1, 0, 0, 0, 0, 0, 0, 0]),
        );
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
            batch: crate::driver::receiver::Batch::default(),
            unsent: Vec::new(),
            rejected_log: LogLimiter::default(),
            guard: PauseGuard::new(config.pause),
            pause_log: LogLimiter::default(),
            view: config.view,
            changes: Vec::new(),
            applying: std::collections::VecDeque::new(),
            looked: Looked::new(now()),
            receiver: None,
            losses: crate::driver::receiver::Losses::default(),
            indirect: indirect::IndirectProbes::new(config.indirect_probes, seed),
            relay: relay::Relay::new(config.relay_secret),
            udp,
        };
        state.receiver = state
            .path
            .as_ref()
            .map(|p| crate::driver::receiver::Receiver::new(&p.socket));
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
                // Registry changes still to apply: no sleeping meanwhile.
                () = std::future::ready(()), if !state.applying.is_empty() => {}
            }
            // Then, whatever woke it, every wake-up does a bounded share of
            // each kind of work, timers first: a flood of datagrams cannot
            // hold back a heartbeat or a timeout, and timers that are always
            // due (more heartbeats than the machine can send) cannot hold
            // back the replies or the node's requests.
            // Before anything is judged: if the driver itself was not
            // running, nothing in flight across that gap may count.
            state.check_pause(now());
            // Heartbeats go out in chunks, each followed by reading as many
            // replies as it sent and a batch more: replies are read while
            // they are fresh and never pile up past the socket's buffer, an
            // overloaded schedule still reads the replies to what it sends,
            // and a flood gets one batch per chunk. Read before the timeouts
            // are applied: a reply already waiting is not a miss.
            let mut sent_total = 0;
            let started = now();
            let mut ran_dry;
            loop {
                let t = now();
                let due = state.table.next_deadline().is_some_and(|d| d <= t);
                let chunk = SEND_CHUNK.min(SEND_BATCH - sent_total);
                let sent = if due && chunk > 0 {
                    state.send_due(t, chunk)
                } else {
                    0
                };
                sent_total += sent;
                let batch = RECEIVE_BATCH.saturating_add(sent);
                state.collect_calls(batch);
                ran_dry = state.receive(batch);
                // Bounded in time as well as in count: a wake-up that ran
                // long on its own work would look like a pause to the guard.
                if sent < SEND_CHUNK || now().saturating_duration_since(started) >= SEND_TIME {
                    break;
                }
            }
            state.expire();
            state
                .indirect
                .ask(&mut state.table, state.path.as_ref(), &state.counters);
            for _ in 1..COMMAND_BATCH {
                match commands.try_recv() {
                    Ok(command) => state.on_command(command),
                    Err(_) => break,
                }
            }
            state.continue_apply();
            // The view before the events: whoever hears of a transition
            // finds it in the statuses.
            state.publish_view();
            state.fanout.publish(&mut state.table, &state.counters.work);
            state.counters.awareness.store(
                u64::from(state.table.awareness_score()),
                std::sync::atomic::Ordering::Relaxed,
            );
            if !ran_dry {
                // A socket that never runs dry (a flood) keeps this task
                // always ready, and a task always ready is polled again
                // before the runtime looks at its timers and sockets: the
                // node's other tasks (its gRPC calls and server, readers,
                // timers) would wait behind the flood for seconds. Yielding
                // gives the runtime its turn.
                tokio::task::yield_now().await;
            }
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

/// What a table holds of some ids, and in all: what the committer checks a
/// group of registry changes against.
pub(crate) struct Known {
    /// Per id asked about, its heartbeat period if it is registered.
    pub(crate) periods: Vec<Option<Duration>>,
    /// How many peers are registered.
    pub(crate) count: usize,
    /// The heartbeats per second all of them ask for.
    pub(crate) demand: HeartbeatRate,
}

/// What `table` holds of each of `ids`, and in all.
pub(crate) fn known(table: &PeerTable, ids: &[String]) -> Known {
    let periods = ids
        .iter()
        .map(|id| {
            table
                .key_of(id)
                .and_then(|key| table.spec(key))
                .map(|spec| spec.detector.heartbeat_freq)
        })
        .collect();
    Known {
        periods,
        count: table.len(),
        demand: table.heartbeat_demand(),
    }
}

pub(crate) use clock::now;

/// An `Apply` command on its way into the table.
struct Applying {
    ops: std::vec::IntoIter<TableOp>,
    results: Vec<bool>,
    reply: oneshot::Sender<Vec<bool>>,
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
    /// Where the socket's datagrams are read, many per system call.
    batch: crate::driver::receiver::Batch,
    /// Heartbeats the last flush could not send (kept for its capacity).
    unsent: Vec<Unsent>,
    rejected_log: LogLimiter,
    guard: PauseGuard,
    pause_log: LogLimiter,
    /// Where readers find the statuses.
    view: Arc<PeerView>,
    /// Registry changes being applied, a bounded share per wake-up.
    applying: std::collections::VecDeque<Applying>,
    /// Status changes on their way to `view`; empty between wake-ups.
    changes: Vec<StatusChange>,
    /// Up to when every reply has been read, per path.
    looked: Looked,
    /// Reads the datagram socket, noticing what it dropped.
    receiver: Option<crate::driver::receiver::Receiver>,
    /// When the socket dropped replies.
    losses: crate::driver::receiver::Losses,
    /// The rounds this node asks helpers for.
    indirect: indirect::IndirectProbes,
    /// The requests of other monitors this node serves.
    relay: relay::Relay,
    /// Whether the node has a datagram socket.
    udp: bool,
}

/// The last time the driver found no reply waiting, per path: a reply it
/// reads later came after it, and a timeout up to it was looked at. While
/// the driver falls behind its replies, these stay put, so neither its own
/// lag nor replies it had no time to read count against a peer.
struct Looked {
    datagram: Instant,
    grpc: Instant,
    /// `datagram` as it was when the latest datagram was read: that
    /// datagram was queued after it.
    before_last_read: Instant,
}

impl Looked {
    fn new(t: Instant) -> Self {
        Self {
            datagram: t,
            grpc: t,
            before_last_read: t,
        }
    }

    /// Up to when a timeout may be settled at `t`: where every reply, on
    /// any path, has been read, and never further back than [`MAX_DEFER`].
    fn settled_by(&self, t: Instant) -> Instant {
        bounded(self.datagram.min(self.grpc), t)
    }
}

/// How far behind `t` the driver's judgement may stay while its socket
/// never runs dry. Its own overload drains the socket within a wake-up or
/// two; a socket that stays full for longer is being flooded, and a flood
/// must not hold back the conviction of a peer that died meanwhile by more
/// than this.
const MAX_DEFER: Duration = Duration::from_millis(100);

/// `looked`, but not further back than [`MAX_DEFER`] before `t`.
fn bounded(looked: Instant, t: Instant) -> Instant {
    looked.max(t.checked_sub(MAX_DEFER).unwrap_or(looked))
}

impl Loop {
    /// Applies up to [`APPLY_BATCH`] queued registry changes; answers each
    /// `Apply` once all of its changes are in the table and in the view
    /// (readers see a change before its caller hears it is done).
    fn continue_apply(&mut self) {
        let mut budget = APPLY_BATCH;
        while budget > 0 {
            let Some(applying) = self.applying.front_mut() else {
                return;
            };
            let t = now();
            for op in applying.ops.by_ref().take(budget) {
                budget -= 1;
                let id: Arc<str> = match &op {
                    TableOp::Upsert(spec) => spec.peer_id.clone(),
                    TableOp::Remove(id) => Arc::from(id.as_str()),
                };
                let existed = match op {
                    TableOp::Upsert(spec) => {
                        !matches!(self.table.upsert(spec, t), Upsert::Inserted(_))
                    }
                    TableOp::Remove(id) => self.table.remove(&id),
                };
                applying.results.push(existed);
                // Published at once as well as through the table's queue of
                // changes: twice, to the same effect.
                self.changes.push(match self.table.published(&id) {
                    Some(status) => StatusChange::Upsert(status),
                    None => StatusChange::Removed(id),
                });
            }
            self.view.apply(&mut self.changes);
            if applying.ops.len() > 0 {
                return;
            }
            if let Some(done) = self.applying.pop_front() {
                self.grpc
                    .retain_used(self.table.len(), self.table.addresses());
                let _ = done.reply.send(done.results);
            }
        }
    }

    /// Hands the statuses that changed to the readers' view, at most
    /// [`VIEW_BUDGET`] of them: the rest go with the next wake-up.
    fn publish_view(&mut self) {
        self.table.take_changes(VIEW_BUDGET, &mut self.changes);
        self.view.apply(&mut self.changes);
    }

    fn on_command(&mut self, command: Command) {
        // A dropped reply receiver is a caller that gave up: nothing to do.
        match command {
            Command::Apply { ops, reply } => {
                // Applied over the next wake-ups, a bounded share each.
                self.applying.push_back(Applying {
                    results: Vec::with_capacity(ops.len()),
                    ops: ops.into_iter(),
                    reply,
                });
            }
            Command::Known { ids, reply } => {
                let _ = reply.send(known(&self.table, &ids));
            }
            Command::SetKeyring { keyring, reply } => {
                self.table.set_indirect(
                    self.indirect.enabled() && indirect::usable(1, keyring.as_ref(), self.udp),
                );
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

    /// Takes up to `limit` finished gRPC heartbeats; if none is left
    /// waiting, every gRPC reply so far has been read.
    fn collect_calls(&mut self, limit: usize) {
        for _ in 0..limit {
            match self.calls.next().now_or_never() {
                Some(Some(outcome)) => self.on_call(outcome),
                _ => {
                    self.looked.grpc = now();
                    return;
                }
            }
        }
    }

    /// Applies the outcome of a heartbeat sent over gRPC.
    fn on_call(&mut self, outcome: crate::driver::grpc_pool::GrpcOutcome) {
        let t = now();
        match outcome.reply {
            Some((id, epoch)) => {
                // Another node at the peer's address: the pooled connection
                // goes, and the next heartbeat connects afresh (a peer
                // registered by name is looked up again: its name may have
                // moved, while the connection stayed up to the old address).
                if let Some(spec) = self.table.spec(outcome.id.peer()) {
                    if *spec.peer_id != *id {
                        self.grpc.close(&spec.host, spec.port);
                    }
                }
                let verdict = self.table.on_reply_in(
                    outcome.id,
                    Path::Grpc,
                    Arrival {
                        after: bounded(self.looked.grpc, t),
                        read: t,
                    },
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

    /// Settles as unanswered up to [`EXPIRE_BATCH`] heartbeats whose
    /// timeout passed by the time every reply had been read; those whose
    /// timeout came later wait until the driver has caught up with them.
    fn expire(&mut self) {
        let looked = self.looked.settled_by(now());
        let losses = &self.losses;
        let voided = self.table.poll_expired_doubting(
            looked,
            &mut self.expired,
            EXPIRE_BATCH,
            |sent, deadline| losses.excuse(sent, deadline),
        );
        if voided > 0 {
            self.counters.overload_voided.fetch_add(
                u64::try_from(voided).unwrap_or(u64::MAX),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        // Nothing in flight was sent longer ago than the longest timeout a
        // registration may have (an hour is far past any).
        if let Some(old) = looked.checked_sub(Duration::from_secs(3600)) {
            self.losses.forget_before(old);
        }
        for e in self.expired.drain(..) {
            for path in [Path::Datagram, Path::Grpc] {
                if e.paths.contains(path) {
                    self.counters.work.timed_out(path);
                }
            }
            if e.paths.contains(Path::Indirect) {
                self.indirect.forget(e.id);
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

    /// Sends up to `limit` heartbeats due by `t`; returns how many.
    fn send_due(&mut self, t: Instant, limit: usize) -> usize {
        self.table.poll_due_at_most(t, &mut self.due, limit);
        let mut due = std::mem::take(&mut self.due);
        let sent = due.len();
        for probe in due.drain(..) {
            self.lateness
                .record(probe.sent_at.saturating_duration_since(probe.due));
            self.send(&probe);
        }
        self.due = due;
        self.flush();
        sent
    }

    /// Hands the queued heartbeat datagrams to the kernel, many per system
    /// call, and settles those it did not take as a send that failed at
    /// once would have been.
    fn flush(&mut self) {
        let Some(p) = self.path.as_mut() else {
            return;
        };
        let sent = p.flush(&mut self.unsent);
        for _ in 0..sent {
            self.counters.work.sent(Path::Datagram);
        }
        let t = now();
        let mut unsent_all = std::mem::take(&mut self.unsent);
        for unsent in unsent_all.drain(..) {
            match unsent {
                Unsent::Backlog(id) => {
                    // Not carried for this node's own reasons: no outcome.
                    self.table.void(id);
                    Counters::add(&self.counters.overload_voided);
                }
                Unsent::Refused(id) => {
                    let over_budget = self.calls.len() >= GRPC_IN_FLIGHT;
                    let call = match self.table.spec(id.peer()) {
                        Some(spec) if self.grpc_allowed && !over_budget => {
                            self.grpc
                                .call(&spec.host, spec.port, id, spec.detector.timeout)
                        }
                        _ => None,
                    };
                    // gRPC carries it: marked on gRPC before the datagram is
                    // taken off, so that it is never without a path (which
                    // would be a miss at once). Without gRPC it stays as sent
                    // and its silence is judged at its timeout, like a
                    // datagram the network lost.
                    if let Some(call) = call {
                        self.table.mark_sent(id, Path::Grpc, false);
                        self.counters.work.sent(Path::Grpc);
                        self.calls.push(call);
                        self.table.on_path_failed(id, Path::Datagram, t);
                    }
                }
            }
        }
        self.unsent = unsent_all;
    }

    fn send(&mut self, probe: &Probe) {
        let Some(spec) = self.table.spec(probe.id.peer()) else {
            return;
        };
        let sent = match self.path.as_mut() {
            Some(p) => p.send(probe, spec, self.grpc_allowed, &mut self.resolving),
            None => crate::driver::datagram_path::Sent::GRPC_ONLY,
        };
        let over_budget = sent.grpc && self.grpc_allowed && self.calls.len() >= GRPC_IN_FLIGHT;
        let call = if sent.grpc && self.grpc_allowed && !over_budget {
            self.grpc
                .call(&spec.host, spec.port, probe.id, spec.detector.timeout)
        } else {
            None
        };
        let nowhere = sent.datagram.is_none() && call.is_none();
        if sent == crate::driver::datagram_path::Sent::BACKLOG
            || (over_budget && sent.datagram.is_none())
            || (sent.resolving && nowhere)
        {
            // Not carried for this node's own reasons: no outcome at all.
            self.table.void(probe.id);
            Counters::add(&self.counters.overload_voided);
            return;
        }
        if let Some(trial) = sent.datagram {
            // Counted once the kernel took it (`flush`).
            self.table.mark_sent(probe.id, Path::Datagram, trial);
        }
        if let Some(call) = call {
            self.table.mark_sent(probe.id, Path::Grpc, false);
            self.counters.work.sent(Path::Grpc);
            self.calls.push(call);
        }
        // A heartbeat that left on no path at all for the peer's reasons (no
        // usable address) stays in flight and is a miss at its timeout, like
        // one that got no answer.
        if self
            .path
            .as_ref()
            .is_some_and(|p| p.queued() >= crate::driver::datagram_path::SEND_BATCH)
        {
            self.flush();
        }
    }

    /// Reads up to `limit` datagrams: pings are answered, pongs judged. If
    /// it finds none left waiting, every datagram so far has been read, and
    /// it returns true.
    fn receive(&mut self, limit: usize) -> bool {
        let (Some(path), Some(receiver)) = (self.path.as_mut(), self.receiver.as_mut()) else {
            self.looked.datagram = now();
            return true;
        };
        let socket = path.socket.clone();
        let read = now();
        let arrival = Arrival {
            after: bounded(self.looked.datagram, read),
            read,
        };
        let mut read = 0;
        while read < limit {
            let asked = now();
            let got = match receiver.try_recv_many(&socket, &mut self.batch) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.looked.datagram = now();
                    return true;
                }
                Err(e) => {
                    // ICMP errors of earlier sends surface here on some
                    // systems; they say nothing about this socket.
                    tracing::trace!(error = %e, "udp receive");
                    read += 1;
                    continue;
                }
            };
            read += got;
            for i in 0..got {
                let Some((r, bytes)) = self.batch.get(i) else {
                    break;
                };
                if r.lost_before {
                    // The count comes with the next datagram queued after
                    // the drops: they happened after the one read before it
                    // was queued, so after the socket was last found empty
                    // before that read.
                    self.losses.record(self.looked.before_last_read, now());
                    self.counters.receive_drops.store(
                        u64::from(receiver.drops()),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
                self.looked.before_last_read = self.looked.datagram;
                let (n, from) = (bytes.len(), r.from);
                if from.port() == 0 {
                    // No sender named: nothing to answer or judge.
                    continue;
                }
                if heartbeater_core::indirect::is_relayed(bytes) {
                    on_relayed(
                        bytes,
                        from,
                        arrival,
                        path,
                        &mut self.table,
                        &mut self.indirect,
                        &mut self.relay,
                        &self.counters,
                    );
                    continue;
                }
                let datagram = match Datagram::open(bytes, path.keyring()) {
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
                        let (outcome, left_both) =
                            path.on_pong(&datagram, arrival, &mut self.table);
                        match outcome {
                            PongOutcome::Forged => {
                                let relayed = self.relay.on_pong(
                                    &datagram,
                                    from,
                                    now(),
                                    path.keyring(),
                                    &socket,
                                    &self.counters,
                                );
                                if !relayed {
                                    Counters::add(&self.counters.forged_tokens)
                                }
                            }
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
            if self.batch.drained() {
                // The read found the socket empty after these: all that
                // was queued when it began has been read.
                self.looked.datagram = asked;
                return true;
            }
        }
        false
    }
}

/// Handles an indirect-probe message: a request this node serves as a
/// helper, or an answer to one of its own rounds.
#[allow(clippy::too_many_arguments)]
fn on_relayed(
    bytes: &[u8],
    from: SocketAddr,
    arrival: Arrival,
    path: &DatagramPath,
    table: &mut PeerTable,
    indirect: &mut indirect::IndirectProbes,
    relay: &mut relay::Relay,
    counters: &Counters,
) {
    use heartbeater_core::indirect::{open, Relayed};
    let (message, keyring) = match (open(bytes, path.keyring()), path.keyring()) {
        (Ok(m), Some(k)) => (m, k),
        (Err(DecodeError::Auth(_)), _) | (Ok(_), None) => {
            Counters::add(&counters.auth_failed);
            return;
        }
        (Err(_), _) => {
            Counters::add(&counters.malformed);
            return;
        }
    };
    match message {
        Relayed::Request(request) => {
            let me = (path.identity(), path.epoch());
            match relay.on_request(
                &request,
                from,
                bytes.len(),
                now(),
                me,
                keyring,
                &path.socket,
            ) {
                relay::Served::Probed => Counters::add(&counters.relay_served),
                relay::Served::Refused => Counters::add(&counters.relay_refused),
            }
        }
        Relayed::Answer(answer) => match indirect.on_answer(&answer, from, arrival, table, path) {
            indirect::Answered::Kept => {
                Counters::add(&counters.indirect_answers);
                Counters::add(&counters.indirect_kept);
            }
            indirect::Answered::Unmatched => Counters::add(&counters.indirect_answers),
            indirect::Answered::Forged => Counters::add(&counters.forged_tokens),
        },
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
