//! The node's operations, independent of how they are called: the gRPC
//! service, the server's own methods and tests all go through [`Node`].
//!
//! A registration changes two things, the durable registry and the live
//! table. They change in that order, under one lock, so that what a caller
//! was told has happened is on disk, and the table never holds a peer the
//! disk does not.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use heartbeater_core::{DetectorConfig, PeerSpec, PeerStatus, Upsert, ValidationError};
use tokio::sync::{broadcast, mpsc};

use crate::event::PeerEvent;
use crate::monitor::Monitor;
use crate::proto::{
    DeregisterPeerRequest, DeregisterPeerResponse, HeartbeatMessage, HeartbeatResponse,
    RegisterPeerRequest, RegisterPeerResponse,
};
use crate::store::{PeerRecord, RegistryStore, StoreError};

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
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
}

/// One running node's shared state.
pub(crate) struct Node {
    identity: String,
    epoch: u64,
    store: std::sync::Mutex<Option<Arc<dyn RegistryStore>>>,
    monitor: Arc<Monitor>,
    registry_lock: tokio::sync::Mutex<()>,
    topics: Arc<crate::topic::Topics>,
}

impl Node {
    /// A node over `store`; peers already in it are scheduled at once.
    pub(crate) fn new(
        identity: String,
        epoch: u64,
        store: Arc<dyn RegistryStore>,
        records: Vec<PeerRecord>,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<(Arc<str>, u64)>) {
        let (monitor, epochs) = Monitor::new();
        let now = tokio::time::Instant::now().into_std();
        monitor.update(|table| {
            for record in records {
                match spec_of_record(&record) {
                    Ok(spec) => {
                        table.restore(spec, record.last_epoch, now);
                    }
                    Err(e) => tracing::warn!(peer = %record.peer_id, error = %e, "stored peer is invalid; not monitored"),
                }
            }
        });
        let node = Arc::new(Self {
            identity,
            epoch,
            store: std::sync::Mutex::new(Some(store)),
            monitor,
            registry_lock: tokio::sync::Mutex::new(()),
            topics: Arc::default(),
        });
        (node, epochs)
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

    pub(crate) fn monitor(&self) -> &Arc<Monitor> {
        &self.monitor
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

    /// Answers a heartbeat.
    pub(crate) fn heartbeat(&self, msg: &HeartbeatMessage) -> Result<HeartbeatResponse, NodeError> {
        if msg.client_id.len() > heartbeater_core::config::MAX_PEER_ID_BYTES {
            return Err(ValidationError::new("client_id", "must be at most 256 bytes").into());
        }
        self.monitor
            .answered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(HeartbeatResponse {
            server_id: self.identity.clone(),
            server_epoch: self.epoch,
        })
    }

    /// Heartbeats answered since the node was built.
    pub(crate) fn heartbeats_answered(&self) -> u64 {
        self.monitor
            .answered
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Registers or updates a peer; returns once the registration is durable.
    pub(crate) async fn register(
        &self,
        req: RegisterPeerRequest,
    ) -> Result<RegisterPeerResponse, NodeError> {
        let detector = DetectorConfig::from_millis(
            req.heartbeat_freq_millis,
            req.timeout_millis,
            req.max_missed,
        )?;
        let spec = PeerSpec::new(&req.peer_id, &req.peer_host, req.peer_port, detector)?;
        let record = PeerRecord {
            peer_id: spec.peer_id.to_string(),
            host: spec.host.clone(),
            port: spec.port,
            heartbeat_freq: detector.heartbeat_freq,
            timeout: detector.timeout,
            max_missed: detector.max_missed.get(),
            registered_at_micros: unix_micros(SystemTime::now()),
            last_epoch: None,
        };
        let _guard = self.registry_lock.lock().await;
        let store = self.store()?;
        blocking(move || store.put_peer(&record)).await?;
        let now = tokio::time::Instant::now().into_std();
        let upsert = self.monitor.update(|t| t.upsert(spec, now));
        Ok(RegisterPeerResponse {
            server_id: self.identity.clone(),
            server_epoch: self.epoch,
            updated: !matches!(upsert, Upsert::Inserted(_)),
        })
    }

    /// Deregisters a peer; returns once the deletion is durable.
    pub(crate) async fn deregister(
        &self,
        req: DeregisterPeerRequest,
    ) -> Result<DeregisterPeerResponse, NodeError> {
        heartbeater_core::config::validate_peer_id(&req.peer_id)?;
        let _guard = self.registry_lock.lock().await;
        if self.monitor.read(|t| t.key_of(&req.peer_id)).is_none() {
            return Err(NodeError::UnknownPeer(req.peer_id));
        }
        let store = self.store()?;
        let id = req.peer_id.clone();
        blocking(move || store.delete_peer(&id)).await?;
        self.monitor.update(|t| t.remove(&req.peer_id));
        Ok(DeregisterPeerResponse {
            server_id: self.identity.clone(),
            server_epoch: self.epoch,
        })
    }

    /// Every peer's status, ordered by id.
    pub(crate) fn peers(&self) -> Vec<PeerStatus> {
        self.monitor.read(|t| t.statuses())
    }

    /// Events from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.monitor.subscribe()
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
pub(crate) fn spec_of_record(r: &PeerRecord) -> Result<PeerSpec, ValidationError> {
    let detector = DetectorConfig::new(r.heartbeat_freq, Some(r.timeout), Some(r.max_missed))?;
    PeerSpec::new(&r.peer_id, &r.host, u32::from(r.port), detector)
}

pub(crate) fn unix_micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros()
        .try_into()
        .unwrap_or(i64::MAX)
}
