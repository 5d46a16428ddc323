//! The node: [`HeartbeatServer`] and its builder.
//!
//! Life cycle: `build()` opens the registry and settles identity and epoch
//! (so a bad data directory fails before anything listens); `start()` binds,
//! serves and starts heartbeating; `stop()` drains connections and releases
//! the data directory. A node starts once: to restart, build a new one on the
//! same data directory, which is exactly what a process restart does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use heartbeater_core::config::validate_host;
use heartbeater_core::{
    HeartbeatRate, Keyring, PauseThreshold, PeerStatus, PeerTable, StateCounts,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic_health::server::HealthReporter;

use crate::driver::fanout::LearnedEpochs;
use crate::driver::lateness::LatenessHistogram;
use crate::driver::outbound::Outbound;
use crate::driver::{Driver, DriverConfig};
use crate::error::ServerError;
use crate::grpc::access::{Access, AuthTokens, Gate};
use crate::grpc::listener::ListenerCounters;
use crate::grpc::oversize::OversizeLayer;
use crate::grpc::proto::heartbeat_service_server::HeartbeatServiceServer;
use crate::grpc::proto::topic_service_server::TopicServiceServer;
use crate::grpc::proto::{
    DeregisterPeerRequest, DeregisterPeerResponse, RegisterPeerRequest, RegisterPeerResponse,
};
use crate::grpc::service::HeartbeatGrpc;
use crate::grpc::tls::{TlsClientConfig, TlsServerConfig, TlsSlot};
use crate::node::counters::{Counters, DatagramStats, IndirectStats, PauseStats};
use crate::node::event::EventStream;
use crate::node::quarantine::QuarantinedPeer;
use crate::node::{DefaultDetector, Limits, Node, NodeError, NodeParts};
use crate::store::{MemoryStore, NodeMeta, RegistryStore, RocksDbStore};
use crate::topic::{TopicError, TopicGrpc, TopicHandler, TopicPublisher, TopicSubscriber};

/// Default listen host.
pub const DEFAULT_HOST: &str = "127.0.0.1";
/// Default listen port.
pub const DEFAULT_PORT: u16 = 8181;
/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "heartbeater-data";
/// Default most peers a node's registry holds.
pub const DEFAULT_MAX_PEERS: usize = 100_000;
/// Default shortest heartbeat period a registration over gRPC may ask for:
/// the shortest any registration may ask for. What a caller can make the
/// node send is bounded by the heartbeat budget instead
/// ([`DEFAULT_NETWORK_HEARTBEAT_BUDGET`]).
pub const DEFAULT_MIN_NETWORK_FREQ: Duration = heartbeater_core::config::MIN_INTERVAL;
/// Default heartbeat budget: the heartbeats per second all of a node's peers
/// together may ask for before a registration over gRPC that asks for more
/// is refused. In the benchmarks (docs/BENCHMARKS.md) 10,000 heartbeats/s
/// cost a node a seventh of a core, and its datagram path, saturated,
/// carried 75,000 to 178,000/s: 20,000/s leaves it far from the overload
/// where heartbeats time out, with time to answer its own monitors. It
/// takes a hundred peers at the seed's 5 ms, 2,000 at 100 ms, or the whole
/// default registry (100,000 peers) at 5 s.
pub const DEFAULT_NETWORK_HEARTBEAT_BUDGET: u64 = 20_000;
/// Default largest request message, in bytes.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Default most connections open at once from one client IP address.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 1024;
/// Default most gRPC connections open at once, from all clients together:
/// each holds a file descriptor, and a node out of descriptors cannot open
/// RocksDB's files or accept its monitors' connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default time a gRPC connection may go without a call before it is
/// closed (a client's HTTP/2 stack answers keepalive pings by itself, so
/// only this frees a connection that is up but unused). Calls in progress,
/// long streams included, keep a connection in use.
pub const DEFAULT_CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// File descriptors kept for everything but gRPC connections (RocksDB's
/// files, sockets, the HTTP listener's connections) when the connection
/// bound is fitted to the process's descriptor limit.
const DESCRIPTORS_KEPT: usize = 512;
/// Default most concurrent calls (HTTP/2 streams) on one connection.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 128;
/// Default most `WatchPeers` streams open at once.
pub const DEFAULT_MAX_WATCHERS: usize = 1024;
/// Default interval of the HTTP/2 pings the gRPC server sends on each
/// connection, and how long it waits for their acknowledgement before it
/// closes the connection: a client that vanished (a host gone, a half-open
/// connection) frees its slot and descriptor within about 80 s.
pub const DEFAULT_HTTP2_KEEPALIVE: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(20));
/// How long `stop` waits for open calls to finish before cutting them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
enum Storage {
    DataDir(PathBuf),
    InMemory,
    Custom(Arc<dyn RegistryStore>),
}

/// Configures a [`HeartbeatServer`]. Every setting has a default: listen on
/// `127.0.0.1:8181`, keep the registry in RocksDB under `./heartbeater-data`,
/// take the stored epoch + 1.
#[derive(Clone)]
#[must_use]
pub struct HeartbeatServerBuilder {
    host: String,
    port: u16,
    worker_count: usize,
    epoch: Option<u64>,
    node_id: Option<String>,
    storage: Storage,
    udp: bool,
    keyring: Option<Keyring>,
    max_peers: usize,
    min_network_freq: Duration,
    heartbeat_budget: u64,
    tls: Option<TlsServerConfig>,
    peer_tls: Option<TlsClientConfig>,
    tokens: Option<AuthTokens>,
    peer_token: Option<String>,
    auth_reads: bool,
    max_request_bytes: usize,
    max_connections: usize,
    max_connections_per_address: usize,
    max_streams_per_connection: u32,
    http2_keepalive: (Duration, Duration),
    connection_idle_timeout: Duration,
    max_watchers: usize,
    pause: PauseThreshold,
    default_detector: DefaultDetector,
    default_rise: u32,
    indirect_probes: usize,
}

impl Default for HeartbeatServerBuilder {
    fn default() -> Self {
        Self {
            host: DEFAULT_HOST.to_owned(),
            port: DEFAULT_PORT,
            worker_count: 1,
            epoch: None,
            node_id: None,
            storage: Storage::DataDir(PathBuf::from(DEFAULT_DATA_DIR)),
            udp: true,
            keyring: None,
            max_peers: DEFAULT_MAX_PEERS,
            min_network_freq: DEFAULT_MIN_NETWORK_FREQ,
            heartbeat_budget: DEFAULT_NETWORK_HEARTBEAT_BUDGET,
            tls: None,
            peer_tls: None,
            tokens: None,
            peer_token: None,
            auth_reads: false,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            http2_keepalive: DEFAULT_HTTP2_KEEPALIVE,
            connection_idle_timeout: DEFAULT_CONNECTION_IDLE_TIMEOUT,
            max_watchers: DEFAULT_MAX_WATCHERS,
            pause: PauseThreshold::Auto,
            default_detector: DefaultDetector::MissCount,
            default_rise: 1,
            indirect_probes: crate::driver::indirect::DEFAULT_INDIRECT_PROBES,
        }
    }
}

impl HeartbeatServerBuilder {
    /// Host to listen on: an IP address or a name that resolves to a local one.
    pub fn server_host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// Port to listen on; 0 picks a free one (see [`HeartbeatServer::local_addr`]).
    pub fn server_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Threads of the runtime that the blocking facade
    /// ([`crate::blocking::HeartbeatServer`]) creates; ignored by the async
    /// server, which runs on the caller's runtime. 1 to 1024.
    pub fn worker_count(mut self, worker_count: usize) -> Self {
        self.worker_count = worker_count;
        self
    }

    /// An explicit epoch (at least 1, and at least the stored one) instead of
    /// the stored epoch + 1.
    pub fn server_epoch(mut self, epoch: u64) -> Self {
        self.epoch = Some(epoch);
        self
    }

    /// Keep the registry in RocksDB under `dir` (created if missing).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.storage = Storage::DataDir(dir.into());
        self
    }

    /// The identity this node answers with, instead of a UUID chosen at its
    /// first start: a name of 1 to 64 ASCII letters, digits, `.`, `_` and
    /// `-` (`db-2`), so that peers can be registered by a name people
    /// know. Stored at the first start like the UUID; a data directory
    /// that already holds another identity is refused
    /// ([`ServerError::IdentityChanged`]), since every monitor knows the
    /// node by it.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = Some(id.into());
        self
    }

    /// Keep the registry in memory: a new identity at every build, nothing
    /// survives the process.
    pub fn in_memory(mut self) -> Self {
        self.storage = Storage::InMemory;
        self
    }

    /// Whether the node uses UDP on its port number (default: yes). With
    /// UDP, the node answers heartbeat datagrams ([`crate::driver::udp`]) and sends
    /// its own heartbeats as datagrams, falling back to gRPC per peer where
    /// they go unanswered. Without, it neither binds UDP nor sends
    /// datagrams: every heartbeat is a gRPC call (for networks that drop UDP
    /// or policies that require every byte to go over the TLS-capable path).
    pub fn udp_heartbeats(mut self, enabled: bool) -> Self {
        self.udp = enabled;
        self
    }

    /// Authenticate every heartbeat datagram with the cluster keys of
    /// `keyring` (see [`Keyring`]): datagrams sent are signed with its
    /// primary key, datagrams received are dropped unless signed with one of
    /// its keys. Peers whose datagrams do not verify are reported
    /// unreachable, and [`HeartbeatServer::datagram_stats`] counts them. On a
    /// node with a cluster key, heartbeats to peers travel as datagrams only:
    /// the gRPC path is not covered by the key. Rotate keys on a running
    /// node with [`HeartbeatServer::set_keyring`].
    pub fn cluster_keys(mut self, keyring: Keyring) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// The most peers the registry holds (default 100,000); a registration
    /// of one more is refused with [`NodeError::RegistryFull`]
    /// (`RESOURCE_EXHAUSTED` over gRPC). Peers restored from the data
    /// directory are all kept, even past it.
    pub fn max_peers(mut self, max_peers: usize) -> Self {
        self.max_peers = max_peers;
        self
    }

    /// The shortest heartbeat period a `RegisterPeer` call over gRPC may ask
    /// for (default 1 ms, the shortest any registration may ask for); a
    /// shorter one is `INVALID_ARGUMENT` naming `heartbeat_freq_millis`.
    /// What whoever reaches the node can make it send is bounded by
    /// [`HeartbeatServerBuilder::network_heartbeat_budget`]; this is for a
    /// node that wants each peer slow as well.
    /// [`HeartbeatServer::register_peer`], called in-process, is not bound
    /// by it.
    pub fn min_network_heartbeat_freq(mut self, freq: Duration) -> Self {
        self.min_network_freq = freq;
        self
    }

    /// The heartbeat budget: how many heartbeats per second all peers
    /// together may ask for (each peer `1000 / heartbeat_freq_millis`),
    /// default [`DEFAULT_NETWORK_HEARTBEAT_BUDGET`]. A `RegisterPeer` call
    /// over gRPC that would take the sum past it is refused with
    /// [`NodeError::OverHeartbeatBudget`] (`RESOURCE_EXHAUSTED`), so that
    /// whoever reaches the node cannot make it flood a third party, however
    /// many registrations they make. Every peer counts towards the sum:
    /// those registered in-process and those restored from the data
    /// directory too, though neither is ever refused for it; a registration
    /// that asks for no more than the peer's current one is always
    /// accepted, so a node over its budget can be brought back under it.
    /// `u64::MAX` lifts the budget; 0 refuses every network registration
    /// that adds heartbeats.
    pub fn network_heartbeat_budget(mut self, per_second: u64) -> Self {
        self.heartbeat_budget = per_second;
        self
    }

    /// Serve gRPC over TLS only (mutual TLS when `tls` has a client CA):
    /// a client without TLS, with a CA that does not trust this node's
    /// certificate, or without an accepted client certificate, is refused
    /// at the handshake. Rotate with [`HeartbeatServer::set_tls`].
    pub fn tls(mut self, tls: TlsServerConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// TLS for the connections this node opens itself: heartbeats to
    /// peers over gRPC, and topic subscriptions. With it, those connect
    /// only to nodes whose certificate chains to its CA, presenting its
    /// client certificate when it has one.
    pub fn peer_tls(mut self, tls: TlsClientConfig) -> Self {
        self.peer_tls = Some(tls);
        self
    }

    /// Require a bearer token (`authorization: Bearer <token>`) on calls
    /// that change the registry (`RegisterPeer`, `DeregisterPeer`), and on
    /// every call with [`HeartbeatServerBuilder::auth_reads`]. A missing or
    /// wrong token is `UNAUTHENTICATED` and changes nothing. The first
    /// token is also the one this node sends on its own calls. Rotate with
    /// [`HeartbeatServer::set_auth_tokens`].
    pub fn auth_tokens(mut self, tokens: AuthTokens) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// The token this node sends on the calls it makes itself (heartbeats
    /// over gRPC, topic subscriptions), when it is not the first of its own
    /// [`HeartbeatServerBuilder::auth_tokens`] (or the node accepts none).
    pub fn peer_token(mut self, token: impl Into<String>) -> Self {
        self.peer_token = Some(token.into());
        self
    }

    /// Require the token on reads too: `Heartbeat`, `ListPeers`,
    /// `WatchPeers`, topic subscriptions, health and reflection (default:
    /// no, they stay open). Nodes that heartbeat this one over gRPC then
    /// need the token as well.
    pub fn auth_reads(mut self, required: bool) -> Self {
        self.auth_reads = required;
        self
    }

    /// The largest request message accepted, in bytes (default 4 MiB);
    /// a larger one is refused with `RESOURCE_EXHAUSTED`.
    pub fn max_request_bytes(mut self, bytes: usize) -> Self {
        self.max_request_bytes = bytes;
        self
    }

    /// The most gRPC connections open at once, from all clients together
    /// (default [`DEFAULT_MAX_CONNECTIONS`], 4096); one more is closed as
    /// soon as it is accepted. At start the node raises its soft limit of
    /// open files to the hard one, and if that still leaves too few
    /// descriptors for this many connections and its own files, it lowers
    /// the bound to fit and says so in its log.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections;
        self
    }

    /// The most connections one client may hold open, a client being one
    /// IPv4 address or one IPv6 /64 (default 1024: a node opens one per
    /// subscription); one more is closed as soon as it is accepted.
    pub fn max_connections_per_address(mut self, connections: usize) -> Self {
        self.max_connections_per_address = connections;
        self
    }

    /// The most calls in progress on one connection (HTTP/2 concurrent
    /// streams, default 128); clients queue the calls past it.
    pub fn max_streams_per_connection(mut self, streams: u32) -> Self {
        self.max_streams_per_connection = streams;
        self
    }

    /// How often the gRPC server pings each connection, and how long it
    /// waits for the acknowledgement before closing it (default
    /// [`DEFAULT_HTTP2_KEEPALIVE`]: 60 s and 20 s).
    pub fn http2_keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.http2_keepalive = (interval, timeout);
        self
    }

    /// How long a gRPC connection may go without a call before it is closed
    /// (default [`DEFAULT_CONNECTION_IDLE_TIMEOUT`], 5 minutes), at a
    /// moment when nothing it sent is waiting to be read; a client opens a
    /// new one when it calls again.
    pub fn connection_idle_timeout(mut self, idle: Duration) -> Self {
        self.connection_idle_timeout = idle;
        self
    }

    /// The most `WatchPeers` streams open at once (default 1024); one more
    /// is refused with `RESOURCE_EXHAUSTED`.
    pub fn max_watchers(mut self, watchers: usize) -> Self {
        self.max_watchers = watchers;
        self
    }

    /// The local-pause guard (on by default, [`PauseThreshold::Auto`]: half
    /// the shortest heartbeat period, at least 20 ms; any threshold is kept
    /// within 20 ms and 1 hour). When this node's own
    /// scheduler did not run for longer than the threshold (the process was
    /// stopped, starved of CPU, or its machine frozen), the heartbeats in
    /// flight across the gap are voided instead of counted, each affected
    /// peer gets a fresh heartbeat, and only what happens after the pause
    /// counts. Each pause lengthens the detection of a peer that died
    /// meanwhile by the pause and at most one period.
    /// [`PauseThreshold::Off`] counts every heartbeat, pauses or not.
    pub fn pause_threshold(mut self, threshold: PauseThreshold) -> Self {
        self.pause = threshold;
        self
    }

    /// Indirect probes (default: 3 helpers; 0 turns them off; at most 8).
    /// Before this node convicts a peer, it asks up to `helpers` other
    /// peers it sees ALIVE over datagrams to heartbeat the suspect on its
    /// behalf; one valid answer through them keeps the peer ALIVE, shown
    /// as reached indirectly ([`PeerStatus::reached_via`]), so a bad link
    /// between this node and one peer is not a verdict. The detection
    /// bound grows by one timeout: `max_missed x frequency + 2 x timeout`.
    ///
    /// Requests and answers are authenticated with the cluster key
    /// ([`Self::cluster_keyring`]); without one, or without UDP, indirect
    /// probes stay off whatever this says. This node also serves the
    /// requests of other monitors with the same key, within a rate per
    /// monitor.
    pub fn indirect_probes(mut self, helpers: usize) -> Self {
        self.indirect_probes = helpers.min(crate::driver::indirect::MAX_INDIRECT_PROBES);
        self
    }

    /// The rule for registrations that name none (default: the count rule).
    /// A registration's own `detector` field always wins; peers restored
    /// from the registry keep the rule they were registered with.
    pub fn default_detector(mut self, detector: DefaultDetector) -> Self {
        self.default_detector = detector;
        self
    }

    /// Consecutive valid replies before an unreachable peer is reported
    /// alive again, for registrations that name none (default 1: the first
    /// reply; 1 to 100). More damps flapping on a lossy link, at the cost
    /// of reporting a recovery that many periods later.
    pub fn default_rise(mut self, rise: u32) -> Self {
        self.default_rise = rise;
        self
    }

    /// Keep the registry in a store of your own.
    pub fn store(mut self, store: Arc<dyn RegistryStore>) -> Self {
        self.storage = Storage::Custom(store);
        self
    }

    /// Binds the node's sockets (gRPC, and UDP unless turned off) on the
    /// configured address without building anything: a caller that binds
    /// first, then builds, then [`HeartbeatServer::start_on`]s finds a port
    /// in use before the data directory is created or a new epoch stored.
    pub async fn bind(&self) -> Result<BoundSockets, ServerError> {
        bind_sockets(&self.host, self.port, self.udp).await
    }

    /// [`HeartbeatServerBuilder::build`] from async code: opening RocksDB
    /// and syncing the new epoch run on a blocking thread, so no runtime
    /// worker waits on the disk.
    pub async fn build_async(self) -> Result<HeartbeatServer, ServerError> {
        tokio::task::spawn_blocking(move || self.build())
            .await
            .map_err(|e| ServerError::Internal(format!("build: {e}")))?
    }

    /// Validates the settings, opens the registry and settles identity and
    /// epoch (the new epoch is stored before this returns). Blocks on disk
    /// IO: from async code, use [`HeartbeatServerBuilder::build_async`].
    pub fn build(self) -> Result<HeartbeatServer, ServerError> {
        let host =
            validate_host("server_host", &self.host).map_err(|e| ServerError::InvalidConfig {
                field: "server_host",
                reason: e.reason,
            })?;
        if !(Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600))
            .contains(&self.connection_idle_timeout)
        {
            return Err(ServerError::InvalidConfig {
                field: "connection_idle_timeout",
                reason: format!("{:?}; must be 1 s to 7 days", self.connection_idle_timeout),
            });
        }
        if !(1..=1024).contains(&self.worker_count) {
            return Err(ServerError::InvalidConfig {
                field: "worker_count",
                reason: format!("{}; must be 1 to 1024", self.worker_count),
            });
        }
        for (field, value) in [
            ("max_request_bytes", self.max_request_bytes),
            ("max_connections", self.max_connections),
            (
                "max_connections_per_address",
                self.max_connections_per_address,
            ),
            ("max_watchers", self.max_watchers),
            (
                "max_streams_per_connection",
                self.max_streams_per_connection as usize,
            ),
        ] {
            if value == 0 {
                return Err(ServerError::InvalidConfig {
                    field,
                    reason: "0; must be at least 1".into(),
                });
            }
        }
        if self.epoch == Some(0) {
            return Err(ServerError::InvalidConfig {
                field: "server_epoch",
                reason: "0; epochs start at 1 (0 means \"no epoch\" on the wire)".into(),
            });
        }
        let requested_id =
            match &self.node_id {
                Some(id) => Some(heartbeater_core::identity::canonical_identity(id).map_err(
                    |e| ServerError::InvalidConfig {
                        field: "node_id",
                        reason: e.to_string(),
                    },
                )?),
                None => None,
            };
        let store: Arc<dyn RegistryStore> = match self.storage {
            Storage::DataDir(dir) => Arc::new(RocksDbStore::open(dir)?),
            Storage::InMemory => Arc::new(MemoryStore::new()),
            Storage::Custom(store) => store,
        };
        let stored = store.load_meta()?;
        let identity = match (&stored, requested_id) {
            (Some(meta), requested) => {
                let identity = heartbeater_core::identity::canonical_identity(&meta.identity)
                    .map_err(|_| ServerError::InvalidConfig {
                        field: "data_dir",
                        reason: format!(
                            "stored identity {:?} is neither a UUID nor a node name",
                            meta.identity
                        ),
                    })?;
                match requested {
                    Some(requested) if requested != identity => {
                        return Err(ServerError::IdentityChanged {
                            stored: identity,
                            requested,
                        })
                    }
                    _ => identity,
                }
            }
            (None, Some(requested)) => requested,
            (None, None) => uuid::Uuid::new_v4().to_string(),
        };
        let instance = instance_of(&identity);
        let stored_epoch = stored.as_ref().map_or(0, |m| m.epoch);
        let epoch = match self.epoch {
            Some(requested) if requested < stored_epoch => {
                return Err(ServerError::EpochRegressed {
                    stored: stored_epoch,
                    requested,
                })
            }
            Some(requested) => requested,
            None => stored_epoch.saturating_add(1),
        };
        store.save_meta(&NodeMeta {
            identity: identity.clone(),
            epoch,
        })?;
        let now = tokio::time::Instant::now().into_std();
        let (table, quarantined) = crate::node::restore::restore_table(&*store, now)?;
        for peer in quarantined.iter().take(16) {
            tracing::warn!(
                peer = %peer.peer_id,
                reason = %peer.reason,
                "stored peer cannot be loaded; quarantined, not monitored (deregister it to remove it)"
            );
        }
        if quarantined.len() > 16 {
            tracing::warn!(
                count = quarantined.len(),
                "stored peers quarantined in all; ListPeers lists them"
            );
        }
        // Stored peers are all monitored, even past a budget lowered since
        // they were registered; the operator should hear why registrations
        // are refused from the first one on.
        let budget = HeartbeatRate::per_second(self.heartbeat_budget);
        let demand = table.heartbeat_demand();
        if demand > budget {
            tracing::warn!(
                demand = %demand,
                budget = %budget,
                "stored peers ask for more heartbeats per second than the heartbeat budget; all are monitored, and registrations over gRPC that ask for more are refused until they ask for less"
            );
        }
        let counters = Arc::new(Counters::default());
        let lateness = Arc::new(LatenessHistogram::default());
        let (driver, handle, events, learned_epochs) =
            Driver::new(counters.clone(), lateness.clone());
        if let DefaultDetector::PhiAccrual { threshold } = self.default_detector {
            heartbeater_core::PhiParams::new(threshold, Duration::ZERO, Duration::from_millis(1))
                .map_err(|e| ServerError::InvalidConfig {
                field: "default_detector",
                reason: e.reason,
            })?;
        }
        if !(1..=heartbeater_core::config::MAX_RISE).contains(&self.default_rise) {
            return Err(ServerError::InvalidConfig {
                field: "default_rise",
                reason: format!("{}; must be from 1 to 100", self.default_rise),
            });
        }
        let limits = Limits {
            max_peers: self.max_peers,
            min_network_freq: self.min_network_freq,
            heartbeat_budget: budget,
            default_detector: self.default_detector,
            default_rise: self.default_rise,
        };
        let node = Node::new(NodeParts {
            identity,
            epoch,
            store,
            table,
            driver: handle,
            events,
            counters,
            limits,
            quarantined,
        });
        if let Some(token) = &self.peer_token {
            crate::grpc::access::validate_token(token).map_err(|reason| {
                ServerError::InvalidConfig {
                    field: "peer_token",
                    reason: reason.into(),
                }
            })?;
        }
        let outbound = Outbound::new(
            self.peer_tls,
            self.peer_token
                .as_deref()
                .or(self.tokens.as_ref().map(|t| t.primary())),
        );
        Ok(HeartbeatServer {
            instance,
            host,
            port: self.port,
            worker_count: self.worker_count,
            udp: self.udp,
            tls: TlsSlot::new(self.tls),
            gate: Gate::new(self.tokens, self.auth_reads),
            outbound,
            grpc_limits: GrpcLimits {
                max_request_bytes: self.max_request_bytes,
                max_connections: self.max_connections,
                max_connections_per_address: self.max_connections_per_address,
                max_streams_per_connection: self.max_streams_per_connection,
                max_watchers: self.max_watchers,
                http2_keepalive: self.http2_keepalive,
                connection_idle_timeout: self.connection_idle_timeout,
            },
            listener_counters: Arc::default(),
            keyring: Mutex::new(self.keyring),
            lateness,
            pause: self.pause,
            indirect_probes: self.indirect_probes,
            node,
            lifecycle: Mutex::new(Lifecycle::Built {
                driver: Box::new(driver),
                learned_epochs,
            }),
        })
    }
}

/// What the gRPC side of a node accepts.
#[derive(Debug, Clone, Copy)]
struct GrpcLimits {
    max_request_bytes: usize,
    max_connections: usize,
    max_connections_per_address: usize,
    max_streams_per_connection: u32,
    max_watchers: usize,
    http2_keepalive: (Duration, Duration),
    connection_idle_timeout: Duration,
}

/// What the node's gRPC security has refused since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecurityStats {
    /// Calls refused with `UNAUTHENTICATED` (no token, or a wrong one).
    pub unauthenticated_calls: u64,
    /// Connections closed at accept: their address had its share open.
    pub connections_over_limit: u64,
    /// Connections closed at accept: the node had its most open
    /// ([`HeartbeatServerBuilder::max_connections`]).
    pub connections_over_total: u64,
    /// TLS handshakes that failed (plaintext clients, untrusted or missing
    /// client certificates) or did not finish within 10 s.
    pub tls_handshakes_failed: u64,
    /// Plain-text connections closed because their client sent no HTTP/2
    /// preface within 10 s (or 1,024 were already waiting for theirs).
    pub silent_connections: u64,
    /// Connections closed after going without a call for the idle timeout
    /// ([`HeartbeatServerBuilder::connection_idle_timeout`]).
    pub idle_connections: u64,
}

enum Lifecycle {
    Built {
        driver: Box<Driver>,
        learned_epochs: LearnedEpochs,
    },
    Running(Running),
    Stopping,
    Stopped,
}

struct Running {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    serve: JoinHandle<Result<(), tonic::transport::Error>>,
    /// The accept loop; it holds the listening socket.
    accepting: JoinHandle<()>,
    driver: JoinHandle<PeerTable>,
    epochs: JoinHandle<()>,
    health: HealthReporter,
}

/// A Heartbeater node: answers heartbeats, heartbeats its registered peers,
/// serves `heartbeater.v1.HeartbeatService`, `grpc.health.v1` and server
/// reflection.
///
/// Dropping a running server stops its tasks without draining; call
/// [`HeartbeatServer::stop`] for a graceful stop.
pub struct HeartbeatServer {
    instance: uuid::Uuid,
    host: String,
    port: u16,
    worker_count: usize,
    udp: bool,
    tls: TlsSlot,
    gate: Gate,
    outbound: Outbound,
    grpc_limits: GrpcLimits,
    listener_counters: Arc<ListenerCounters>,
    /// The keyring the driver starts with; the driver owns it once running.
    keyring: Mutex<Option<Keyring>>,
    lateness: Arc<LatenessHistogram>,
    pause: PauseThreshold,
    indirect_probes: usize,
    node: Arc<Node>,
    lifecycle: Mutex<Lifecycle>,
}

impl std::fmt::Debug for HeartbeatServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeartbeatServer")
            .field("identity", &self.identity())
            .field("epoch", &self.epoch())
            .field("local_addr", &self.local_addr())
            .finish()
    }
}

impl HeartbeatServer {
    /// A builder with the defaults.
    pub fn builder() -> HeartbeatServerBuilder {
        HeartbeatServerBuilder::default()
    }

    fn lifecycle(&self) -> MutexGuard<'_, Lifecycle> {
        self.lifecycle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds, starts serving and starts heartbeating the stored peers.
    /// Returns the bound address (useful with port 0).
    pub async fn start(&self) -> Result<SocketAddr, ServerError> {
        let sockets = bind_sockets(&self.host, self.port, self.udp).await?;
        self.start_on(sockets).await
    }

    /// [`HeartbeatServer::start`] on sockets bound by
    /// [`HeartbeatServerBuilder::bind`] before the node was built, so that
    /// a port in use is found before the registry is opened and a new
    /// epoch stored. The sockets' UDP half decides whether heartbeats go
    /// out as datagrams.
    pub async fn start_on(&self, sockets: BoundSockets) -> Result<SocketAddr, ServerError> {
        let (driver, learned_epochs) = {
            let mut lifecycle = self.lifecycle();
            match std::mem::replace(&mut *lifecycle, Lifecycle::Stopping) {
                Lifecycle::Built {
                    driver,
                    learned_epochs,
                } => (driver, learned_epochs),
                Lifecycle::Running(r) => {
                    let addr = r.addr;
                    *lifecycle = Lifecycle::Running(r);
                    return Err(ServerError::AlreadyRunning(addr));
                }
                other @ (Lifecycle::Stopping | Lifecycle::Stopped) => {
                    *lifecycle = other;
                    return Err(ServerError::Stopped);
                }
            }
        };
        match self.spawn(*driver, learned_epochs, sockets).await {
            Ok(running) => {
                let addr = running.addr;
                *self.lifecycle() = Lifecycle::Running(running);
                tracing::info!(%addr, identity = %self.identity(), epoch = self.epoch(), "node started");
                Ok(addr)
            }
            Err(e) => {
                *self.lifecycle() = Lifecycle::Stopped;
                self.node.close_store();
                Err(e)
            }
        }
    }

    async fn spawn(
        &self,
        driver: Driver,
        learned_epochs: LearnedEpochs,
        sockets: BoundSockets,
    ) -> Result<Running, ServerError> {
        let mut token_secret = [0u8; 32];
        getrandom::fill(&mut token_secret)
            .map_err(|e| ServerError::Internal(format!("no randomness for probe tokens: {e}")))?;
        let mut relay_secret = [0u8; 32];
        getrandom::fill(&mut relay_secret)
            .map_err(|e| ServerError::Internal(format!("no randomness for probe tokens: {e}")))?;
        let BoundSockets {
            listener,
            udp,
            display,
        } = sockets;
        let addr = listener.local_addr().map_err(|error| ServerError::Bind {
            addr: display,
            error,
        })?;
        let secured = self.tls.current().is_some() || self.gate.tokens().is_some();
        if !addr.ip().is_loopback() && !secured {
            tracing::warn!(%addr, "listening beyond this host with neither TLS nor a token: anyone who reaches the port can register and deregister peers (see docs/SECURITY.md)");
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (incoming, accepting) = crate::grpc::listener::incoming(
            listener,
            self.tls.clone(),
            crate::grpc::listener::ListenerLimits {
                max_connections: fit_to_descriptors(self.grpc_limits.max_connections),
                max_per_address: self.grpc_limits.max_connections_per_address,
                max_handshakes: crate::grpc::listener::MAX_HANDSHAKES,
                first_bytes: crate::grpc::listener::PREFACE_TIMEOUT,
                idle: self.grpc_limits.connection_idle_timeout,
            },
            self.listener_counters.clone(),
            shutdown_rx.clone(),
        );

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<HeartbeatServiceServer<HeartbeatGrpc>>()
            .await;
        // Both reflection versions, as grpc-go serves them: `v1alpha` is
        // all that Python's grpcio-reflection and older grpcurl, Evans and
        // Postman builds speak. Each describes the other too (each builder
        // adds only its own), so both list the same services.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::grpc::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_error = |e| ServerError::Internal(format!("reflection: {e}"));
        let reflection_v1 = reflection()
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .build_v1()
            .map_err(reflection_error)?;
        let reflection_v1alpha = reflection()
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(reflection_error)?;
        let limit = self.grpc_limits.max_request_bytes;
        let grpc = HeartbeatServiceServer::new(HeartbeatGrpc::new(
            self.node.clone(),
            shutdown_rx.clone(),
            self.gate.clone(),
            self.grpc_limits.max_watchers,
        ))
        .max_decoding_message_size(limit);
        let topics = TopicServiceServer::new(TopicGrpc::new(
            self.node.topics().clone(),
            self.gate.clone(),
        ))
        .max_decoding_message_size(limit);
        let reads = |gate: Gate| {
            move |request: tonic::Request<()>| {
                gate.check(request.metadata(), Access::Read)
                    .map(|()| request)
            }
        };
        let health_service = InterceptedService::new(
            health_service.max_decoding_message_size(limit),
            reads(self.gate.clone()),
        );
        let reflection_v1 = InterceptedService::new(reflection_v1, reads(self.gate.clone()));
        let reflection_v1alpha =
            InterceptedService::new(reflection_v1alpha, reads(self.gate.clone()));
        let mut signal = shutdown_rx.clone();
        let serve = tokio::spawn(
            tonic::transport::Server::builder()
                .max_concurrent_streams(Some(self.grpc_limits.max_streams_per_connection))
                .http2_keepalive_interval(Some(self.grpc_limits.http2_keepalive.0))
                .http2_keepalive_timeout(Some(self.grpc_limits.http2_keepalive.1))
                .layer(OversizeLayer)
                .layer(crate::grpc::idle::ActivityLayer)
                .add_service(health_service)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(grpc)
                .add_service(topics)
                .serve_with_incoming_shutdown(incoming, async move {
                    // Either a `true` or the sender gone means stop.
                    let _ = signal.wait_for(|stop| *stop).await;
                }),
        );
        let keyring = self
            .keyring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if keyring.is_some() && udp.is_none() {
            tracing::warn!("a cluster key is set but UDP is off: the key is not used");
        }
        let mut table = self.node.unpark().unwrap_or_default();
        // Readers find every restored peer from the first moment on; what
        // changes later reaches them from the driver.
        self.node.view().reset(table.published_all());
        table.forget_changes();
        let driver = tokio::spawn(driver.run(
            table,
            DriverConfig {
                identity: self.node.identity().to_owned(),
                epoch: self.node.epoch(),
                udp,
                token_secret,
                keyring,
                outbound: self.outbound.clone(),
                pause: self.pause,
                indirect_probes: self.indirect_probes,
                relay_secret,
                view: self.node.view().clone(),
            },
            shutdown_rx.clone(),
        ));
        let epochs = tokio::spawn(record_epochs(
            self.node.clone(),
            learned_epochs,
            shutdown_rx,
        ));
        Ok(Running {
            addr,
            shutdown,
            serve,
            accepting,
            driver,
            epochs,
            health,
        })
    }

    /// Stops serving and heartbeating, waits (up to 5 s) for open calls, and
    /// releases the data directory. Stopping a stopped server is a no-op.
    pub async fn stop(&self) -> Result<(), ServerError> {
        let running = {
            let mut lifecycle = self.lifecycle();
            match std::mem::replace(&mut *lifecycle, Lifecycle::Stopping) {
                Lifecycle::Running(r) => r,
                Lifecycle::Built { .. } | Lifecycle::Stopped => {
                    *lifecycle = Lifecycle::Stopped;
                    self.node.close_store();
                    return Ok(());
                }
                Lifecycle::Stopping => return Ok(()),
            }
        };
        running
            .health
            .set_not_serving::<HeartbeatServiceServer<HeartbeatGrpc>>()
            .await;
        // End subscription streams first: a graceful shutdown waits for open
        // streams, and subscribers would otherwise hold it for the full drain.
        self.node.topics().close_all();
        let _ = running.shutdown.send(true);
        let mut serve = running.serve;
        let served = match tokio::time::timeout(DRAIN_TIMEOUT, &mut serve).await {
            Ok(joined) => joined,
            Err(_) => {
                tracing::warn!("open calls did not finish within {DRAIN_TIMEOUT:?}; closing them");
                serve.abort();
                serve.await
            }
        };
        // The port is free once the accept loop has let go of it: a node
        // restarted on the same port right after must be able to bind.
        let _ = running.accepting.await;
        if let Ok(table) = running.driver.await {
            self.node.park(table);
        }
        let _ = running.epochs.await;
        self.node.close_store_off_runtime().await;
        *self.lifecycle() = Lifecycle::Stopped;
        tracing::info!(identity = %self.identity(), "node stopped");
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServerError::Internal(format!("server: {e}"))),
            Err(e) if e.is_cancelled() => Ok(()),
            Err(e) => Err(ServerError::Internal(format!("server task: {e}"))),
        }
    }

    /// Whether the node is serving.
    pub fn is_running(&self) -> bool {
        matches!(&*self.lifecycle(), Lifecycle::Running(r) if !r.serve.is_finished())
    }

    /// The node's identity, stable across restarts on one data directory:
    /// its UUID in lower-case hyphenated form, or the name given with
    /// [`HeartbeatServerBuilder::node_id`] at its first start.
    pub fn identity(&self) -> String {
        self.node.identity().to_owned()
    }

    /// The node's epoch: grows at every start on one data directory.
    pub fn epoch(&self) -> u64 {
        self.node.epoch()
    }

    /// The bound address while running; `None` before `start`.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &*self.lifecycle() {
            Lifecycle::Running(r) => Some(r.addr),
            _ => None,
        }
    }

    /// Threads the blocking facade runs this server on.
    pub fn worker_count(&self) -> usize {
        self.worker_count
    }

    /// Every registered peer's status, ordered by peer id. Before `start`,
    /// the peers restored from the data directory, all `Unknown`; after
    /// `stop`, the statuses as they were when the node stopped.
    pub async fn peers(&self) -> Vec<PeerStatus> {
        // Only while the node stops is there no table to ask: nothing then.
        self.node.peers().await.unwrap_or_default()
    }

    /// [`HeartbeatServer::peers`] as one of the node's heavy reads (those
    /// whose cost grows with the registry: `ListPeers` pages, `WatchPeers`
    /// snapshots), of which it serves a bounded number at once: `None`
    /// when as many are running already, for an edge that answers "busy,
    /// come back" (the HTTP API's 503) instead of queueing work.
    pub async fn try_peers(&self) -> Option<Vec<PeerStatus>> {
        let _permit = self.node.heavy_read().ok()?;
        Some(self.node.peers().await.unwrap_or_default())
    }

    /// The stored registrations this node does not monitor because their
    /// records could not be loaded (they do not decode, or fail
    /// validation), ordered by id. Each stays on disk untouched until it is
    /// deregistered or registered again; `ListPeers` reports them too.
    pub fn quarantined_peers(&self) -> Vec<QuarantinedPeer> {
        self.node.quarantined()
    }

    /// How many registered peers are unknown, alive and unreachable. Cheap
    /// next to [`HeartbeatServer::peers`] (no copy of each status), so fit
    /// for health checks and gauges polled on nodes with many peers.
    pub async fn peer_counts(&self) -> StateCounts {
        self.node.state_counts().await.unwrap_or_default()
    }

    /// What the datagram path has seen: pings answered, datagrams rejected
    /// (malformed, failing authentication), forged and unmatched pongs.
    pub fn datagram_stats(&self) -> DatagramStats {
        self.node.counters().snapshot()
    }

    /// What indirect probes did: rounds opened before convicting a peer,
    /// requests sent, answers and the convictions they prevented, and the
    /// requests of other monitors this node served.
    pub fn indirect_stats(&self) -> IndirectStats {
        self.node.counters().indirect_snapshot()
    }

    /// Whether this node asks helpers before convicting a peer: indirect
    /// probes configured ([`HeartbeatServerBuilder::indirect_probes`]) and
    /// a cluster key and UDP to authenticate and carry them.
    pub fn indirect_probes_on(&self) -> bool {
        let keyed = self.keyring.lock().map(|k| k.is_some()).unwrap_or(false);
        self.indirect_probes > 0 && keyed && self.udp
    }

    /// Replaces the cluster keyring, on a running node or before `start`:
    /// the step of a key rotation (add the new key as accepted everywhere,
    /// then make it primary everywhere, then drop the old one), or turning
    /// authentication on (`Some`) or off (`None`). Returns once the driver
    /// uses the new ring.
    pub async fn set_keyring(&self, keyring: Option<Keyring>) -> Result<(), ServerError> {
        let running = matches!(&*self.lifecycle(), Lifecycle::Running(_));
        *self.keyring.lock().unwrap_or_else(|e| e.into_inner()) = keyring.clone();
        if running {
            self.node
                .driver()
                .set_keyring(keyring)
                .await
                .map_err(|_| ServerError::Stopped)?;
        }
        Ok(())
    }

    /// Swaps the node's certificate (and client CA): connections accepted
    /// from now on use `tls`, open ones keep the configuration they were
    /// accepted with. Also turns TLS on for a node started without it.
    pub fn set_tls(&self, tls: TlsServerConfig) {
        self.tls.set(Some(tls));
    }

    /// Swaps the TLS configuration of the connections this node opens
    /// (see [`HeartbeatServerBuilder::peer_tls`]); pooled connections made
    /// with the old one are closed and made again.
    pub fn set_peer_tls(&self, tls: Option<TlsClientConfig>) {
        self.outbound.set_tls(tls);
    }

    /// Swaps the accepted tokens (`None`: no token needed); the next call
    /// is checked against the new ones. The first token becomes the one
    /// the node sends on its own calls.
    pub fn set_auth_tokens(&self, tokens: Option<AuthTokens>) {
        self.outbound
            .set_token(tokens.as_ref().map(|t| t.primary()));
        self.gate.set_tokens(tokens);
    }

    /// What the node's gRPC security has refused since it was built.
    pub fn security_stats(&self) -> SecurityStats {
        use std::sync::atomic::Ordering::Relaxed;
        SecurityStats {
            unauthenticated_calls: self.gate.rejected(),
            connections_over_limit: self.listener_counters.over_limit.load(Relaxed),
            connections_over_total: self.listener_counters.over_total.load(Relaxed),
            tls_handshakes_failed: self.listener_counters.handshakes_failed.load(Relaxed),
            silent_connections: self.listener_counters.silent.load(Relaxed),
            idle_connections: self.listener_counters.idle.load(Relaxed),
        }
    }

    /// Heartbeats this node has answered (from monitors and clients) since it
    /// was built.
    pub fn heartbeats_answered(&self) -> u64 {
        self.node.heartbeats_answered()
    }

    /// The local pauses this node went through since it was built (see
    /// [`HeartbeatServerBuilder::pause_threshold`]).
    pub fn pause_stats(&self) -> PauseStats {
        self.node.counters().pause_snapshot()
    }

    /// The node's local health score, 0 (healthy) to 3: it rises while half
    /// the peers go silent at once, and multiplies every peer's conviction
    /// threshold by `1 + score` meanwhile (docs/DETECTION.md, "Local health
    /// awareness"). A gauge for dashboards: a score above 0 says the
    /// trouble is more likely here than at the peers.
    pub fn awareness_score(&self) -> u8 {
        let score = self
            .node
            .counters()
            .awareness
            .load(std::sync::atomic::Ordering::Relaxed);
        u8::try_from(score).unwrap_or(u8::MAX)
    }

    /// Heartbeats by path, round-trip times, liveness transitions and
    /// registry writes since the node was built: what an exporter turns
    /// into metrics (the CLI's `/metrics`).
    pub fn metrics(&self) -> crate::node::metrics::NodeMetrics {
        self.node.counters().work.snapshot()
    }

    /// How late the scheduler has sent heartbeats against their schedule
    /// since the node started; `since` of two snapshots gives a window.
    pub fn scheduler_lateness(&self) -> crate::driver::lateness::LatenessSnapshot {
        self.lateness.snapshot()
    }

    /// Every peer event from now on.
    pub fn events(&self) -> EventStream {
        EventStream::new(self.node.subscribe())
    }

    /// Every topic this node publishes, with its subscribers and the clients
    /// that answer its heartbeats.
    pub fn topics(&self) -> Vec<crate::topic::TopicStats> {
        self.node.topics().stats()
    }

    /// Publishes `topic` from this node. Subscribers connect to this node's
    /// address; the publisher lives until its last clone is dropped.
    pub fn create_publisher(&self, topic: &str) -> Result<TopicPublisher, TopicError> {
        self.node.topics().create(topic, self.instance)
    }

    /// Subscribes this node to `topic` published by the node at `publisher`
    /// (which may be this node), over TLS and with this node's token when
    /// it has them ([`HeartbeatServerBuilder::peer_tls`],
    /// [`HeartbeatServerBuilder::auth_tokens`]). The client instance id the publisher sees is
    /// this node's identity. Must be called within a tokio runtime; the
    /// subscription reconnects after failures until the returned handle is
    /// dropped.
    pub fn subscribe(
        &self,
        topic: &str,
        publisher: SocketAddr,
        handler: impl TopicHandler,
    ) -> Result<TopicSubscriber, TopicError> {
        crate::topic::subscribe(
            self.instance,
            topic,
            publisher,
            Arc::new(handler),
            self.outbound.clone(),
        )
    }

    /// The node's identity as a UUID: the client instance id of its
    /// subscriptions. For a node named with
    /// [`HeartbeatServerBuilder::node_id`], a UUID derived from the name,
    /// the same at every start.
    pub fn instance_id(&self) -> uuid::Uuid {
        self.instance
    }

    /// Registers a peer with this node directly (what the `RegisterPeer` RPC
    /// does); returns once the registration is durable.
    pub async fn register_peer(
        &self,
        request: RegisterPeerRequest,
    ) -> Result<RegisterPeerResponse, NodeError> {
        self.node.register(request, false).await
    }

    /// Deregisters a peer directly (what the `DeregisterPeer` RPC does).
    pub async fn deregister_peer(
        &self,
        request: DeregisterPeerRequest,
    ) -> Result<DeregisterPeerResponse, NodeError> {
        self.node.deregister(request).await
    }
}

impl Drop for HeartbeatServer {
    fn drop(&mut self) {
        if let Lifecycle::Running(r) = &*self.lifecycle() {
            let _ = r.shutdown.send(true);
        }
        self.node.close_store();
    }
}

enum BindError {
    Tcp(std::io::Error),
    Udp(SocketAddr, std::io::Error),
}

/// A node's listening sockets, bound before the node is built
/// ([`HeartbeatServerBuilder::bind`]) and handed to
/// [`HeartbeatServer::start_on`].
#[derive(Debug)]
pub struct BoundSockets {
    listener: tokio::net::TcpListener,
    udp: Option<Arc<tokio::net::UdpSocket>>,
    /// The address as configured, for errors.
    display: String,
}

impl BoundSockets {
    /// The bound gRPC address (the port the kernel picked, with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// `wanted` connections, or fewer if the process may not open that many
/// files and keep [`DESCRIPTORS_KEPT`] for the rest. The soft limit is
/// raised to the hard one first (Debian's default soft limit is 1024,
/// far below what a node serving thousands of connections needs).
fn fit_to_descriptors(wanted: usize) -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return wanted;
    };
    // A hard limit of "unlimited" cannot be the soft one on every system:
    // ask for a finite number then.
    let target = hard.min(1 << 20);
    let soft = if soft < target && setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
        target
    } else {
        soft
    };
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    let room = connections_within(soft, wanted);
    if room < wanted {
        tracing::warn!(
            open_files_limit = soft,
            wanted,
            serving = room,
            "the open-files limit leaves room for fewer gRPC connections than configured; raise it (ulimit -n, LimitNOFILE=) to serve more"
        );
    }
    room
}

/// The connections a process allowed `open_files` descriptors may serve,
/// at most `wanted`: what is left after [`DESCRIPTORS_KEPT`], and with a
/// small limit, half of it.
fn connections_within(open_files: usize, wanted: usize) -> usize {
    wanted.min(
        open_files
            .saturating_sub(DESCRIPTORS_KEPT)
            .max(open_files / 2),
    )
}

/// Resolves `host` and binds the gRPC listener and, with `udp`, the
/// datagram socket of a node.
async fn bind_sockets(host: &str, port: u16, udp: bool) -> Result<BoundSockets, ServerError> {
    let display = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let bind_error = |error| ServerError::Bind {
        addr: display.clone(),
        error,
    };
    let addr = tokio::net::lookup_host((host, port))
        .await
        .map_err(bind_error)?
        .next()
        .ok_or_else(|| {
            bind_error(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "host resolves to no address",
            ))
        })?;
    let (listener, udp) = bind(addr, udp).await.map_err(|e| match e {
        BindError::Tcp(error) => bind_error(error),
        BindError::Udp(addr, error) => ServerError::UdpBind { addr, error },
    })?;
    Ok(BoundSockets {
        listener,
        udp,
        display,
    })
}

/// Binds the gRPC listener and, with `udp`, a datagram socket on the same
/// address and port number. With port 0 the kernel picks the TCP port, which
/// may be taken for UDP: then another is tried, a few times.
async fn bind(
    addr: SocketAddr,
    udp: bool,
) -> Result<(tokio::net::TcpListener, Option<Arc<tokio::net::UdpSocket>>), BindError> {
    const ATTEMPTS: usize = 16;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(BindError::Tcp)?;
        if !udp {
            return Ok((listener, None));
        }
        let bound = listener.local_addr().map_err(BindError::Tcp)?;
        match tokio::net::UdpSocket::bind(bound).await {
            Ok(socket) => return Ok((listener, Some(Arc::new(socket)))),
            Err(e)
                if addr.port() == 0
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && attempt < ATTEMPTS => {}
            Err(e) => return Err(BindError::Udp(bound, e)),
        }
    }
}

/// Writes the epochs the driver learns, in batches, off the async threads,
/// until shutdown; then writes what is still queued and ends.
/// The UUID that stands for a node in topic frames (`instance_id`): its
/// identity when that is a UUID; for a named node, a version 8 UUID made
/// from a 128-bit FNV-1a hash of its name, stable across restarts without
/// being stored.
fn instance_of(identity: &str) -> uuid::Uuid {
    if let Ok(uuid) = uuid::Uuid::parse_str(identity) {
        return uuid;
    }
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let hash = b"heartbeater node name\0"
        .iter()
        .chain(identity.as_bytes())
        .fold(OFFSET, |h, &b| (h ^ u128::from(b)).wrapping_mul(PRIME));
    uuid::Builder::from_custom_bytes(hash.to_be_bytes()).into_uuid()
}

async fn record_epochs(
    node: Arc<Node>,
    mut rx: LearnedEpochs,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut batch = Vec::new();
    loop {
        let stopping = tokio::select! {
            n = rx.recv_many(&mut batch, 256) => n == 0,
            _ = shutdown.wait_for(|stop| *stop) => true,
        };
        if stopping {
            while let Ok(item) = rx.try_recv() {
                batch.push(item);
            }
        }
        if !batch.is_empty() {
            let Ok(store) = node.store() else { return };
            let items = std::mem::take(&mut batch);
            let result = tokio::task::spawn_blocking(move || {
                items
                    .iter()
                    .try_for_each(|(peer_id, epoch)| store.record_epoch(peer_id, *epoch))
            })
            .await;
            if let Ok(Err(e)) = result {
                tracing::warn!(error = %e, "could not record a peer's epoch");
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_bound_fits_the_open_files_limit() {
        assert_eq!(connections_within(20_000, 4096), 4096);
        assert_eq!(connections_within(4096, 4096), 4096 - DESCRIPTORS_KEPT);
        assert_eq!(connections_within(1024, 4096), 512);
        assert_eq!(connections_within(256, 4096), 128);
        assert_eq!(connections_within(usize::MAX, 4096), 4096);
    }
}
