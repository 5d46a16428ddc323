//! Heartbeater: a liveness service.
//!
//! A node ([`HeartbeatServer`]) answers heartbeats, heartbeats the peers
//! registered with it at each one's own frequency, and tells, for each,
//! whether it is `Alive` or `Unreachable`, with an event on every change. Its
//! registry, identity and epoch live in an embedded RocksDB, so a restarted
//! node resumes where it stopped and its peers can tell it restarted.
//! A [`HeartbeatClient`] drives any node; [`blocking`] has both for code
//! without an async runtime.
//!
//! A node also publishes and subscribes to topics ([`topic`]): a
//! [`TopicPublisher`] can heartbeat every subscriber over the stream that
//! carries the topic's messages, and a [`ClientConnectionListener`] hears which
//! client instances are connected.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use heartbeater::{HeartbeatClient, HeartbeatServer, RegisterPeerRequest};
//!
//! let a = HeartbeatServer::builder().server_port(0).in_memory().build()?;
//! let b = HeartbeatServer::builder().server_port(0).in_memory().build()?;
//! a.start().await?;
//! let b_addr = b.start().await?;
//! let a_addr = a.local_addr().expect("started");
//! let client = HeartbeatClient::new("127.0.0.1", a_addr.port(), Duration::from_millis(500))?;
//! client
//!     .register_peer(RegisterPeerRequest {
//!         peer_id: b.identity(),
//!         peer_host: "127.0.0.1".into(),
//!         peer_port: b_addr.port().into(),
//!         heartbeat_freq_millis: 100,
//!         ..Default::default()
//!     })
//!     .await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
// Library code turns every failure that input or the network can cause into
// an error value; tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod blocking;
mod client;
pub mod client_share;
mod driver;
mod error;
mod grpc;
mod log_limit;
mod node;
mod resolver;
mod server;
pub mod store;
pub mod topic;

pub use client::{HeartbeatClient, HeartbeatClientBuilder};
pub use driver::indirect::{DEFAULT_INDIRECT_PROBES, MAX_INDIRECT_PROBES};
pub use driver::lateness::LatenessSnapshot;
pub use driver::udp;
pub use error::{ClientError, ServerError, Unreachable};
pub use grpc::access::{AuthTokens, TokenError, MAX_TOKENS, MAX_TOKEN_BYTES};
pub use grpc::convert::status_to_proto;
pub use grpc::paging::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
pub use grpc::proto::{
    DeregisterPeerRequest, DeregisterPeerResponse, HeartbeatMessage, HeartbeatResponse,
    ListPeersRequest, ListPeersResponse, RegisterPeerRequest, RegisterPeerResponse,
    WatchPeersRequest,
};
pub use grpc::tls::{TlsClientConfig, TlsError, TlsServerConfig};
pub use grpc::{proto, tls};
/// What a node's identity may be, its canonical spelling, and how an
/// identity from the wire is shown safely.
pub use heartbeater_core::identity;
/// Indirect probes on the wire: the request a monitor sends a helper and
/// the helper's answer (see docs/PROTOCOL.md, "Indirect probes").
pub use heartbeater_core::indirect;
pub use heartbeater_core::{
    DetectorConfig, DetectorKind, HeartbeatRate, KeyError, KeyId, Keyring, PauseThreshold,
    PeerSpec, PeerState, PeerStatus, PhiParams, StateCounts, ValidationError,
};
pub use node::counters::{DatagramStats, IndirectStats, PauseStats};
pub use node::event::{EventStream, PeerEvent, PeerEventKind};
pub use node::metrics::{
    HistogramSnapshot, NodeMetrics, PathCounts, TransitionCounts, GROUP_BUCKETS, RTT_BUCKETS,
    WRITE_BUCKETS,
};
pub use node::quarantine::QuarantinedPeer;
pub use node::{DefaultDetector, NodeError};
pub use server::{
    BoundSockets, HeartbeatServer, HeartbeatServerBuilder, SecurityStats,
    DEFAULT_CONNECTION_IDLE_TIMEOUT, DEFAULT_DATA_DIR, DEFAULT_HOST, DEFAULT_HTTP2_KEEPALIVE,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_ADDRESS, DEFAULT_MAX_PEERS,
    DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_STREAMS_PER_CONNECTION, DEFAULT_MAX_WATCHERS,
    DEFAULT_MIN_NETWORK_FREQ, DEFAULT_NETWORK_HEARTBEAT_BUDGET, DEFAULT_PORT,
};
pub use store::{MemoryStore, RegistryOp, RegistryStore, RocksDbStore, StoreError};
pub use topic::{
    ClientConnectionListener, HeartbeatParameters, HeartbeatParametersBuilder, SubscriptionState,
    TopicError, TopicHandler, TopicPublisher, TopicResponse, TopicStats, TopicSubscriber,
    MAX_NODE_SUBSCRIPTIONS, MAX_SUBSCRIPTIONS,
};
pub use uuid::Uuid;
