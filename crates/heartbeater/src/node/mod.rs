//! The node's operations, independent of how they are called: the gRPC
//! service, the server's own methods and tests all go through [`Node`].
//!
//! A registration changes two things, the durable registry and the live
//! table. They change in that order, so that what a caller was told has
//! happened is on disk, and the table never holds a peer the disk does not.
//!
//! Registry changes are group-committed: callers queue their change, and one
//! committer task at a time takes everything queued, writes it as one synced
//! store write, applies it to the table in queue order and answers every
//! caller. One disk flush then serves as many registrations as arrived during
//! the previous one, instead of each waiting for its own. The committer is a
//! task of its own, not a caller's future, so a client that hangs up cannot
//! leave a write on disk but missing from the table.

pub(crate) mod counters;
pub(crate) mod event;
pub(crate) mod metrics;
pub(crate) mod quarantine;
pub(crate) mod restore;
pub(crate) mod view;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use heartbeater_core::{
    DetectorConfig, DetectorKind, HeartbeatRate, PeerSpec, PeerStatus, PeerTable, PhiParams,
    StateCounts, ValidationError,
};
use tokio::sync::{broadcast, oneshot};

use crate::driver::{DriverHandle, TableOp};
use crate::grpc::convert::unix_micros;
use crate::grpc::proto::{
    DeregisterPeerRequest, DeregisterPeerResponse, HeartbeatMessage, HeartbeatResponse,
    RegisterPeerRequest, RegisterPeerResponse,
};
use crate::node::counters::Counters;
use crate::node::event::PeerEvent;
use crate::node::quarantine::{Quarantine, QuarantinedPeer};
use crate::store::{PeerRecord, RegistryOp, RegistryStore, StoreError};

/// The most changes one store write carries; a bound on how long the first
/// of them waits, not a tuning knob (a group this size is far past where
/// another flush would cost more than the bigger write).
const MAX_GROUP: usize = 4096;

/// A registry change waiting for the committer.
enum Change {
    Register {
        /// Boxed: a registration is ten times the size of a deregistration.
        registration: Box<(PeerRecord, PeerSpec)>,
        /// Made over gRPC, and so bound by the heartbeat budget.
        from_network: bool,
    },
    Deregister {
        peer_id: String,
    },
}

struct Pending {
    change: Change,
    /// Whether the peer was registered before, once committed.
    reply: oneshot::Sender<Result<bool, NodeError>>,
}

#[derive(Default)]
struct CommitQueue {
    pending: Vec<Pending>,
    /// Whether a committer task is running; at most one is.
    committing: bool,
}

/// Why a node operation failed. `Clone` because one failed group write is
/// reported to every caller whose change was in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// A request field is invalid.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// No peer with this id is registered.
    #[error("no peer registered with id {0:?}")]
    UnknownPeer(String),
    /// The registry could not be written; nothing was changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
    /// As many reads that grow with the registry (pages, snapshots) run as
    /// the node serves at once; try again shortly.
    #[error("{limit} peer lists and snapshots are being served, the most this node serves at once; try again shortly")]
    Busy {
        /// The node's limit.
        limit: usize,
    },
    /// The registry holds as many peers as the node allows; deregister some,
    /// or raise the limit ([`crate::HeartbeatServerBuilder::max_peers`]).
    #[error("the registry is full: {limit} peers registered, the most this node accepts")]
    RegistryFull {
        /// The node's limit.
        limit: usize,
    },
    /// A registration over gRPC would make the node's peers ask for more
    /// heartbeats per second than its budget allows; nothing was changed.
    /// Deregister peers, give them longer periods, or raise the budget
    /// ([`crate::HeartbeatServerBuilder::network_heartbeat_budget`]).
    #[error(
        "the heartbeat budget is spent: this node's peers ask for {demand} heartbeats/s, \
         and {after}/s with this registration, past the node's budget of {budget}/s"
    )]
    OverHeartbeatBudget {
        /// The node's budget.
        budget: HeartbeatRate,
        /// What the registered peers ask for, without this registration.
        demand: HeartbeatRate,
        /// What they would ask for with it.
        after: HeartbeatRate,
    },
}

/// What a node accepts from its callers, and what it assumes when they
/// leave a setting out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Limits {
    /// Peers in the registry.
    pub(crate) max_peers: usize,
    /// The shortest heartbeat period a registration over gRPC may ask for.
    pub(crate) min_network_freq: Duration,
    /// The heartbeats per second all peers together may ask for before a
    /// registration over gRPC that asks for more is refused.
    pub(crate) heartbeat_budget: HeartbeatRate,
    /// The rule for registrations that name none.
    pub(crate) default_detector: DefaultDetector,
    /// The hysteresis for registrations that name none.
    pub(crate) default_rise: u32,
}

/// The rule a registration that names none is judged by
/// ([`crate::HeartbeatServerBuilder::default_detector`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum DefaultDetector {
    /// The count rule: `max_missed` heartbeats without a valid reply.
    #[default]
    MissCount,
    /// Phi accrual, convicting at `threshold` (Cassandra's and Akka's
    /// default is 8); the pause and deviation default per peer from its
    /// period unless the registration sets them.
    PhiAccrual {
        /// The phi at which a peer is convicted, 1 to 64.
        threshold: f64,
    },
}

/// One node's shared state. The peer table is here only while no driver
/// runs (before `start`, after `stop`): the running driver task owns it, and
/// this reaches it through `driver`.
pub(crate) struct Node {
    identity: String,
    epoch: u64,
    store: std::sync::Mutex<Option<Arc<dyn RegistryStore>>>,
    /// The table while no driver runs. `start` takes it, `stop` puts back
    /// what the driver returns; never both at once, so the table has one
    /// owner at a time.
    parked: std::sync::Mutex<Option<PeerTable>>,
    driver: DriverHandle,
    events: broadcast::Sender<PeerEvent>,
    counters: Arc<Counters>,
    limits: Limits,
    commits: std::sync::Mutex<CommitQueue>,
    topics: Arc<crate::topic::Topics>,
    quarantine: Quarantine,
    /// The statuses the running driver publishes, for every reader.
    view: Arc<crate::node::view::PeerView>,
    /// Reads whose cost grows with the registry (pages, snapshots, the
    /// HTTP API's list) running at once: past it, callers are told to come
    /// back instead of queueing work.
    heavy_reads: HeavyReads,
}

/// The node's bound on heavy reads: a new one is refused when all places
/// are taken, one already admitted waits for its next place.
struct HeavyReads {
    places: Arc<tokio::sync::Semaphore>,
    limit: usize,
}

impl HeavyReads {
    fn new(limit: usize) -> Self {
        Self {
            places: Arc::new(tokio::sync::Semaphore::new(limit)),
            limit,
        }
    }

    fn try_take(&self) -> Result<tokio::sync::OwnedSemaphorePermit, NodeError> {
        self.places
            .clone()
            .try_acquire_owned()
            .map_err(|_| NodeError::Busy { limit: self.limit })
    }

    async fn take_when_free(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.places.clone().acquire_owned().await.ok()
    }
}

/// Heavy reads (see [`Node::heavy_read`]) a node serves at once.
pub(crate) const MAX_HEAVY_READS: usize = 32;

/// What a node is made of, as the server's builder assembles it.
pub(crate) struct NodeParts {
    pub(crate) identity: String,
    pub(crate) epoch: u64,
    pub(crate) store: Arc<dyn RegistryStore>,
    pub(crate) table: PeerTable,
    pub(crate) driver: DriverHandle,
    pub(crate) events: broadcast::Sender<PeerEvent>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) limits: Limits,
    /// Stored registrations that could not be loaded.
    pub(crate) quarantined: Vec<QuarantinedPeer>,
}

impl Node {
    /// A node over `store` and `table`, which it parks until the driver
    /// behind `driver` starts.
    pub(crate) fn new(parts: NodeParts) -> Arc<Self> {
        let NodeParts {
            identity,
            epoch,
            store,
            table,
            driver,
            events,
            counters,
            limits,
            quarantined,
        } = parts;
        Arc::new(Self {
            identity,
            epoch,
            store: std::sync::Mutex::new(Some(store)),
            parked: std::sync::Mutex::new(Some(table)),
            driver,
            events,
            counters,
            limits,
            commits: std::sync::Mutex::default(),
            topics: Arc::default(),
            quarantine: Quarantine::new(quarantined),
            view: Arc::default(),
            heavy_reads: HeavyReads::new(MAX_HEAVY_READS),
        })
    }

    /// The view the running driver publishes the statuses in.
    pub(crate) fn view(&self) -> &Arc<crate::node::view::PeerView> {
        &self.view
    }

    /// A permit for one read whose cost grows with the registry (a page of
    /// `ListPeers`, a `WatchPeers` snapshot, the HTTP API's list), or
    /// [`NodeError::Busy`] when [`MAX_HEAVY_READS`] are running already.
    pub(crate) fn heavy_read(&self) -> Result<tokio::sync::OwnedSemaphorePermit, NodeError> {
        self.heavy_reads.try_take()
    }

    /// A heavy-read permit once one is free, for a read already admitted
    /// that goes on (the next page of a snapshot); `None` only if the
    /// limit is gone (never, while the node exists).
    pub(crate) async fn heavy_read_when_free(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.heavy_reads.take_when_free().await
    }

    /// Runs `read` on the parked table; `None` while a driver owns it.
    pub(crate) fn with_parked<R>(&self, read: impl FnOnce(&mut PeerTable) -> R) -> Option<R> {
        self.parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .map(read)
    }

    /// Takes the table, for the driver that starts.
    pub(crate) fn unpark(&self) -> Option<PeerTable> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Gives back the table of a driver that stopped.
    pub(crate) fn park(&self, table: PeerTable) {
        *self.parked.lock().unwrap_or_else(|e| e.into_inner()) = Some(table);
    }

    pub(crate) fn driver(&self) -> &DriverHandle {
        &self.driver
    }

    pub(crate) fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    pub(crate) fn identity(&self) -> &str {
        &self.identity
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    pub(crate) fn topics(&self) -> &Arc<crate::topic::Topics> {
        &self.topics
    }

    /// The store, until the node is closed.
    pub(crate) fn store(&self) -> Result<Arc<dyn RegistryStore>, NodeError> {
        self.store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(NodeError::ShuttingDown)
    }

    /// Lets go of the store, so that the data directory is released as soon
    /// as the last write in flight is done.
    pub(crate) fn close_store(&self) {
        self.store.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// [`Node::close_store`] from async code: closing RocksDB waits for its
    /// background work and files, so the last reference is dropped on a
    /// blocking thread, never on a runtime worker.
    pub(crate) async fn close_store_off_runtime(&self) {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(store) = store {
            let _ = tokio::task::spawn_blocking(move || drop(store)).await;
        }
    }

    /// Answers a heartbeat.
    pub(crate) fn heartbeat(&self, msg: &HeartbeatMessage) -> Result<HeartbeatResponse, NodeError> {
        if msg.client_id.len() > heartbeater_core::config::MAX_PEER_ID_BYTES {
            return Err(ValidationError::new("client_id", "must be at most 256 bytes").into());
        }
        Counters::add(&self.counters.answered);
        Ok(HeartbeatResponse {
            server_id: self.identity.clone(),
            server_epoch: self.epoch,
        })
    }

    /// Heartbeats answered since the node was built.
    pub(crate) fn heartbeats_answered(&self) -> u64 {
        self.counters
            .answered
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Registers or updates a peer; returns once the registration is durable.
    /// A registration over the network (`from_network`) may not ask for a
    /// period shorter than the node's minimum, nor push what all peers ask
    /// for past the node's heartbeat budget: whoever reaches the node must
    /// not be able to make it flood a third party with datagrams. The
    /// budget is checked by the committer, which alone sees every change
    /// queued before this one.
    pub(crate) async fn register(
        self: &Arc<Self>,
        req: RegisterPeerRequest,
        from_network: bool,
    ) -> Result<RegisterPeerResponse, NodeError> {
        let detector = detector_of(&req, &self.limits)?;
        let min = self.limits.min_network_freq;
        if from_network && detector.heartbeat_freq < min {
            return Err(ValidationError::new(
                "heartbeat_freq_millis",
                format!(
                    "{} ms; registrations over the network may ask for {} ms at least (this node's minimum)",
                    req.heartbeat_freq_millis,
                    min.as_millis()
                ),
            )
            .into());
        }
        let spec = PeerSpec::new(&req.peer_id, &req.peer_host, req.peer_port, detector)?;
        let peer_id = spec.peer_id.to_string();
        let record = PeerRecord::from_spec(&spec, unix_micros(SystemTime::now()));
        let updated = self
            .commit(Change::Register {
                registration: Box::new((record, spec)),
                from_network,
            })
            .await?;
        Ok(RegisterPeerResponse {
            server_id: self.identity.clone(),
            server_epoch: self.epoch,
            updated,
            peer_id,
        })
    }

    /// Deregisters a peer; returns once the deletion is durable.
    pub(crate) async fn deregister(
        self: &Arc<Self>,
        req: DeregisterPeerRequest,
    ) -> Result<DeregisterPeerResponse, NodeError> {
        // A quarantined record is named as it was stored, which may be a
        // spelling the current rules refuse or would change (`9a0e...`, an
        // upper-case UUID): it is deleted by that name, so that it can go.
        let peer_id = if heartbeater_core::identity::within_stored_bounds(&req.peer_id)
            && self.quarantine.contains(&req.peer_id)
        {
            req.peer_id
        } else {
            heartbeater_core::config::validate_peer_id(&req.peer_id)?
        };
        self.commit(Change::Deregister { peer_id }).await?;
        Ok(DeregisterPeerResponse {
            server_id: self.identity.clone(),
            server_epoch: self.epoch,
        })
    }

    /// Queues `change` and waits until it is durable and in the table.
    /// Returns whether the peer was registered before.
    async fn commit(self: &Arc<Self>, change: Change) -> Result<bool, NodeError> {
        let (reply, outcome) = oneshot::channel();
        let start_committer = {
            let mut queue = self.commits.lock().unwrap_or_else(|e| e.into_inner());
            queue.pending.push(Pending { change, reply });
            !std::mem::replace(&mut queue.committing, true)
        };
        if start_committer {
            tokio::spawn(Arc::clone(self).run_committer());
        }
        outcome.await.map_err(|_| NodeError::ShuttingDown)?
    }

    /// Commits groups until the queue is empty, then ends; the next change
    /// queued starts a new committer.
    async fn run_committer(self: Arc<Self>) {
        loop {
            let group = {
                let mut queue = self.commits.lock().unwrap_or_else(|e| e.into_inner());
                if queue.pending.is_empty() {
                    queue.committing = false;
                    return;
                }
                let take = queue.pending.len().min(MAX_GROUP);
                queue.pending.drain(..take).collect::<Vec<_>>()
            };
            self.commit_group(group).await;
        }
    }

    async fn commit_group(&self, group: Vec<Pending>) {
        let Ok(store) = self.store() else {
            for pending in group {
                let _ = pending.reply.send(Err(NodeError::ShuttingDown));
            }
            return;
        };
        // `ops[i]` is the change `waiting[i]` waits for. Deregistering an
        // unknown id fails alone, and so does registering a new peer into a
        // full registry, or past the heartbeat budget; whether an id is
        // known, how many are and what they ask for take the changes queued
        // before it into account. Only the committer changes which peers are
        // registered, so what the driver says here still holds when the
        // group is applied.
        let ids: Vec<String> = group
            .iter()
            .map(|p| match &p.change {
                Change::Deregister { peer_id } => peer_id.clone(),
                Change::Register { registration, .. } => registration.0.peer_id.clone(),
            })
            .collect();
        let parked = self.with_parked(|table| crate::driver::known(table, &ids));
        let known = match parked {
            Some(known) => known,
            None => match self.driver.known(ids.clone()).await {
                Ok(known) => known,
                Err(_) => {
                    for pending in group {
                        let _ = pending.reply.send(Err(NodeError::ShuttingDown));
                    }
                    return;
                }
            },
        };
        let (mut count, mut demand) = (known.count, known.demand);
        // Each id's period while registered, `None` once not: what a change
        // gives back to the budget when it updates or deregisters a peer.
        let mut registered: HashMap<String, Option<Duration>> =
            ids.into_iter().zip(known.periods).collect();
        // Quarantined ids this group overwrites or deletes.
        let mut cleared: HashSet<String> = HashSet::new();
        let mut ops = Vec::with_capacity(group.len());
        let mut waiting = Vec::with_capacity(group.len());
        for Pending { change, reply } in group {
            match change {
                Change::Register {
                    registration,
                    from_network,
                } => {
                    let (record, spec) = *registration;
                    let before = registered.get(&record.peer_id).copied().flatten();
                    if before.is_none() && count >= self.limits.max_peers {
                        let _ = reply.send(Err(NodeError::RegistryFull {
                            limit: self.limits.max_peers,
                        }));
                        continue;
                    }
                    let period = spec.detector.heartbeat_freq;
                    let freed = before.map_or(HeartbeatRate::ZERO, HeartbeatRate::of_period);
                    let asked = HeartbeatRate::of_period(period);
                    let after = demand.saturating_sub(freed).saturating_add(asked);
                    // Only a change that asks for more can be refused: one
                    // that slows a peer down helps a node over its budget
                    // (restored peers, or in-process ones, may put it there).
                    if from_network && asked > freed && after > self.limits.heartbeat_budget {
                        let _ = reply.send(Err(NodeError::OverHeartbeatBudget {
                            budget: self.limits.heartbeat_budget,
                            demand,
                            after,
                        }));
                        continue;
                    }
                    if before.is_none() {
                        count += 1;
                    }
                    demand = after;
                    registered.insert(record.peer_id.clone(), Some(period));
                    cleared.insert(record.peer_id.clone());
                    ops.push(RegistryOp::Put(record));
                    waiting.push((Some(spec), reply));
                }
                Change::Deregister { peer_id } => {
                    // A quarantined record is on disk but not in the table:
                    // deregistering it is how an operator clears it.
                    let period = registered.get(&peer_id).copied().flatten();
                    let on_disk_only = period.is_none()
                        && !cleared.contains(&peer_id)
                        && self.quarantine.contains(&peer_id);
                    if period.is_some() || on_disk_only {
                        if let Some(period) = period {
                            count = count.saturating_sub(1);
                            demand = demand.saturating_sub(HeartbeatRate::of_period(period));
                        }
                        cleared.insert(peer_id.clone());
                        registered.insert(peer_id.clone(), None);
                        ops.push(RegistryOp::Delete(peer_id));
                        waiting.push((None, reply));
                    } else {
                        let _ = reply.send(Err(NodeError::UnknownPeer(peer_id)));
                    }
                }
            }
        }
        if ops.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let changes = ops.len();
        let ops = match blocking(move || store.apply(&ops).map(|()| ops)).await {
            Ok(ops) => {
                self.counters
                    .work
                    .registry_write(started.elapsed(), changes);
                for op in &ops {
                    match op {
                        RegistryOp::Put(record) => self.quarantine.release(&record.peer_id),
                        RegistryOp::Delete(id) => self.quarantine.release(id),
                    }
                }
                ops
            }
            Err(e) => {
                for (_, reply) in waiting {
                    let _ = reply.send(Err(e.clone()));
                }
                return;
            }
        };
        let table_ops: Vec<TableOp> = ops
            .into_iter()
            .zip(waiting.iter_mut())
            .filter_map(|(op, (spec, _))| match (op, spec.take()) {
                (RegistryOp::Put(_), Some(spec)) => Some(TableOp::Upsert(spec)),
                (RegistryOp::Delete(id), _) => Some(TableOp::Remove(id)),
                (RegistryOp::Put(_), None) => None,
            })
            .collect();
        // The driver takes the group whole. Should it be gone (the node is
        // stopping), the changes are on disk and will be monitored at the
        // next start; the callers learn the node is shutting down.
        let applied = match self.apply_parked(table_ops) {
            Ok(outcomes) => Ok(outcomes),
            Err(table_ops) => self.driver.apply(table_ops).await,
        };
        match applied {
            Ok(outcomes) => {
                for ((_, reply), existed) in waiting.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(existed));
                }
            }
            Err(_) => {
                for (_, reply) in waiting {
                    let _ = reply.send(Err(NodeError::ShuttingDown));
                }
            }
        }
    }

    /// Applies `ops` to the parked table; gives them back while a driver
    /// owns the table.
    fn apply_parked(&self, ops: Vec<TableOp>) -> Result<Vec<bool>, Vec<TableOp>> {
        let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        match parked.as_mut() {
            Some(table) => Ok(crate::driver::apply(table, ops, crate::driver::now())),
            None => Err(ops),
        }
    }

    /// The stored registrations that are not monitored because they could
    /// not be loaded, ordered by id.
    pub(crate) fn quarantined(&self) -> Vec<QuarantinedPeer> {
        self.quarantine.list()
    }

    /// Every peer's status, ordered by id: from the parked table while no
    /// driver runs, else from the view it publishes (never from the driver).
    pub(crate) async fn peers(&self) -> Result<Vec<PeerStatus>, NodeError> {
        if let Some(statuses) = self.with_parked(|t| t.statuses()) {
            return Ok(statuses);
        }
        Ok(self.view.all())
    }

    /// Up to `limit` statuses after peer id `after`, ordered by id, and
    /// whether more follow.
    pub(crate) async fn peers_page(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<PeerStatus>, bool), NodeError> {
        if let Some(page) = self.with_parked(|t| t.statuses_page(after.as_deref(), limit)) {
            return Ok(page);
        }
        Ok(self.view.page(after.as_deref(), limit))
    }

    /// How many peers are in each state.
    pub(crate) async fn state_counts(&self) -> Result<StateCounts, NodeError> {
        if let Some(counts) = self.with_parked(|t| t.state_counts()) {
            return Ok(counts);
        }
        Ok(self.view.counts())
    }

    /// Events from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.events.subscribe()
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| NodeError::ShuttingDown)?
        .map_err(NodeError::from)
}

/// Rebuilds the validated registration of a stored record.
/// The detector settings a registration asks for, with the node's defaults
/// for what it leaves out. Every field is checked and named on error.
fn detector_of(
    req: &RegisterPeerRequest,
    limits: &Limits,
) -> Result<DetectorConfig, ValidationError> {
    use crate::grpc::proto::Detector;
    let base = DetectorConfig::from_millis(
        req.heartbeat_freq_millis,
        req.timeout_millis,
        req.max_missed,
    )?;
    let asked = match req.detector {
        None => Detector::Unspecified,
        Some(v) => Detector::try_from(v)
            .map_err(|_| ValidationError::new("detector", format!("{v}: not a known detector")))?,
    };
    // The phi threshold to use when the registration sets none, or `None`
    // for the count rule.
    let node_phi = match limits.default_detector {
        DefaultDetector::PhiAccrual { threshold } => Some(threshold),
        DefaultDetector::MissCount => None,
    };
    let phi = match asked {
        Detector::Unspecified => node_phi,
        Detector::MissCount => None,
        Detector::PhiAccrual => {
            Some(node_phi.unwrap_or(heartbeater_core::phi::DEFAULT_PHI_THRESHOLD))
        }
    };
    let kind = match phi {
        Some(default_threshold) => {
            let defaults = PhiParams::for_period(base.heartbeat_freq);
            let pause = duration_field(
                "acceptable_pause_millis",
                req.acceptable_pause_millis,
                0,
                defaults.acceptable_pause(),
            )?;
            let std = duration_field(
                "min_std_dev_millis",
                req.min_std_dev_millis,
                1,
                defaults.min_std_dev(),
            )?;
            DetectorKind::PhiAccrual(PhiParams::new(
                req.phi_threshold.unwrap_or(default_threshold),
                pause,
                std,
            )?)
        }
        None => {
            let phi_only = [
                ("phi_threshold", req.phi_threshold.is_some()),
                (
                    "acceptable_pause_millis",
                    req.acceptable_pause_millis.is_some(),
                ),
                ("min_std_dev_millis", req.min_std_dev_millis.is_some()),
            ];
            if let Some((field, _)) = phi_only.iter().find(|(_, set)| *set) {
                return Err(ValidationError::new(
                    field,
                    "only for the phi accrual detector (detector: DETECTOR_PHI_ACCRUAL)",
                ));
            }
            DetectorKind::MissCount
        }
    };
    base.with_kind(kind)
        .with_rise(req.rise.unwrap_or(limits.default_rise))
}

/// An optional duration in milliseconds, `min_ms` to one hour, or
/// `default` when unset.
fn duration_field(
    field: &'static str,
    millis: Option<i64>,
    min_ms: i64,
    default: Duration,
) -> Result<Duration, ValidationError> {
    match millis {
        None => Ok(default),
        Some(ms) if (min_ms..=3_600_000).contains(&ms) => {
            Ok(Duration::from_millis(ms.unsigned_abs()))
        }
        Some(ms) => Err(ValidationError::new(
            field,
            format!("{ms} ms; must be from {min_ms} ms to 1 hour"),
        )),
    }
}

pub(crate) fn spec_of_record(r: &PeerRecord) -> Result<PeerSpec, ValidationError> {
    let detector = DetectorConfig::new(r.heartbeat_freq, Some(r.timeout), Some(r.max_missed))?
        .with_kind(r.kind)
        .with_rise(r.rise)?;
    let spec = PeerSpec::new(&r.peer_id, &r.host, u32::from(r.port), detector)?;
    if *spec.peer_id != *r.peer_id {
        // Stored before ids were canonicalised. Monitored under the
        // canonical id, it could not be deregistered by either spelling:
        // the table would hold one and the disk the other.
        return Err(ValidationError::new(
            "peer_id",
            format!(
                "{:?} was stored before UUIDs were written in lower case; deregister it and register {:?}",
                r.peer_id, spec.peer_id
            ),
        ));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn heavy_reads_past_the_limit_are_busy_and_a_place_given_back_serves_one() {
        let reads = HeavyReads::new(MAX_HEAVY_READS);
        let held: Vec<_> = (0..MAX_HEAVY_READS)
            .map(|_| reads.try_take().expect("within the limit"))
            .collect();
        let refused = reads.try_take().expect_err("one past the limit");
        assert!(matches!(
            refused,
            NodeError::Busy {
                limit: MAX_HEAVY_READS
            }
        ));
        // What a gRPC caller and an HTTP caller are told.
        assert_eq!(
            tonic::Status::from(refused).code(),
            tonic::Code::ResourceExhausted
        );
        // A snapshot already admitted waits for its next place.
        let waiting = tokio::spawn({
            let places = reads.places.clone();
            async move { places.acquire_owned().await.is_ok() }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no place free yet");
        drop(held);
        assert!(waiting.await.unwrap(), "served once a place is back");
        assert!(reads.try_take().is_ok());
    }
}
