//! A blocking facade over the async node and client, shaped like the seed's
//! Java API: `builder()...build()?`, `start()?`, `stop()?`, `is_running()`.
//!
//! Each facade owns a tokio runtime with `worker_count` threads. Do not use
//! it from inside an async context: there, use the async types directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use heartbeater_core::{PeerStatus, StateCounts};
use tokio::runtime::Runtime;

use crate::error::{ClientError, ServerError};
use crate::grpc::proto;
use crate::node::event::PeerEvent;
use crate::node::NodeError;
use crate::store::RegistryStore;
use crate::topic::{
    ClientConnectionListener, HeartbeatParameters, TopicError, TopicHandler, TopicResponse,
    TopicSubscriber,
};

fn runtime(worker_count: usize, name: &str) -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_count.max(1))
        .thread_name(name)
        .enable_all()
        .build()
}

/// Configures a blocking [`HeartbeatServer`]; same settings as
/// [`crate::HeartbeatServerBuilder`].
#[must_use]
#[derive(Clone, Default)]
pub struct HeartbeatServerBuilder {
    inner: crate::HeartbeatServerBuilder,
}

impl HeartbeatServerBuilder {
    /// See [`crate::HeartbeatServerBuilder::server_host`].
    pub fn server_host(self, host: impl Into<String>) -> Self {
        Self {
            inner: self.inner.server_host(host),
        }
    }
    /// See [`crate::HeartbeatServerBuilder::server_port`].
    pub fn server_port(self, port: u16) -> Self {
        Self {
            inner: self.inner.server_port(port),
        }
    }
    /// Threads of this server's runtime (1 to 1024).
    pub fn worker_count(self, worker_count: usize) -> Self {
        Self {
            inner: self.inner.worker_count(worker_count),
        }
    }
    /// See [`crate::HeartbeatServerBuilder::server_epoch`].
    pub fn server_epoch(self, epoch: u64) -> Self {
        Self {
            inner: self.inner.server_epoch(epoch),
        }
    }
    /// See [`crate::HeartbeatServerBuilder::node_id`].
    pub fn node_id(self, id: impl Into<String>) -> Self {
        Self {
            inner: self.inner.node_id(id),
        }
    }
    /// See [`crate::HeartbeatServerBuilder::data_dir`].
    pub fn data_dir(self, dir: impl Into<PathBuf>) -> Self {
        Self {
            inner: self.inner.data_dir(dir),
        }
    }
    /// See [`crate::HeartbeatServerBuilder::in_memory`].
    pub fn in_memory(self) -> Self {
        Self {
            inner: self.inner.in_memory(),
        }
    }
    /// See [`crate::HeartbeatServerBuilder::store`].
    pub fn store(self, store: Arc<dyn RegistryStore>) -> Self {
        Self {
            inner: self.inner.store(store),
        }
    }

    /// See [`crate::HeartbeatServerBuilder::udp_heartbeats`].
    pub fn udp_heartbeats(self, enabled: bool) -> Self {
        Self {
            inner: self.inner.udp_heartbeats(enabled),
        }
    }
    /// See [`crate::HeartbeatServerBuilder::max_peers`].
    pub fn max_peers(self, max_peers: usize) -> Self {
        Self {
            inner: self.inner.max_peers(max_peers),
        }
    }
    /// See [`crate::HeartbeatServerBuilder::min_network_heartbeat_freq`].
    pub fn min_network_heartbeat_freq(self, freq: std::time::Duration) -> Self {
        Self {
            inner: self.inner.min_network_heartbeat_freq(freq),
        }
    }
    /// See [`crate::HeartbeatServerBuilder::network_heartbeat_budget`].
    pub fn network_heartbeat_budget(self, per_second: u64) -> Self {
        Self {
            inner: self.inner.network_heartbeat_budget(per_second),
        }
    }
    /// See [`crate::HeartbeatServerBuilder::cluster_keys`].
    pub fn cluster_keys(self, keyring: crate::Keyring) -> Self {
        Self {
            inner: self.inner.cluster_keys(keyring),
        }
    }

    /// See [`crate::HeartbeatServerBuilder::tls`].
    pub fn tls(self, tls: crate::TlsServerConfig) -> Self {
        Self {
            inner: self.inner.tls(tls),
        }
    }
    /// See [`crate::HeartbeatServerBuilder::peer_tls`].
    pub fn peer_tls(self, tls: crate::TlsClientConfig) -> Self {
        Self {
            inner: self.inner.peer_tls(tls),
        }
    }
    /// See [`crate::HeartbeatServerBuilder::auth_tokens`].
    pub fn auth_tokens(self, tokens: crate::AuthTokens) -> Self {
        Self {
            inner: self.inner.auth_tokens(tokens),
        }
    }
    /// See [`crate::HeartbeatServerBuilder::peer_token`].
    pub fn peer_token(self, token: impl Into<String>) -> Self {
        Self {
            inner: self.inner.peer_token(token),
        }
    }
    /// See [`crate::HeartbeatServerBuilder::auth_reads`].
    pub fn auth_reads(self, required: bool) -> Self {
        Self {
            inner: self.inner.auth_reads(required),
        }
    }
    /// See [`crate::HeartbeatServerBuilder::max_request_bytes`].
    pub fn max_request_bytes(self, bytes: usize) -> Self {
        Self {
            inner: self.inner.max_request_bytes(bytes),
        }
    }

    /// Validates, opens the registry, and creates the server's runtime.
    pub fn build(self) -> Result<HeartbeatServer, ServerError> {
        let server = self.inner.build()?;
        let runtime =
            runtime(server.worker_count(), "heartbeater-server").map_err(ServerError::Runtime)?;
        Ok(HeartbeatServer { server, runtime })
    }
}

/// A node driven from blocking code. Dropping it stops it gracefully.
pub struct HeartbeatServer {
    // Declared before the runtime: fields drop in order, and the server's
    // tasks must go before the runtime that runs them.
    server: crate::HeartbeatServer,
    runtime: Runtime,
}

impl std::fmt::Debug for HeartbeatServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("HeartbeatServer")
            .field(self.server())
            .finish()
    }
}

impl HeartbeatServer {
    /// A builder with the defaults.
    pub fn builder() -> HeartbeatServerBuilder {
        HeartbeatServerBuilder::default()
    }

    fn server(&self) -> &crate::HeartbeatServer {
        &self.server
    }

    /// Binds and starts; returns the bound address.
    pub fn start(&self) -> Result<SocketAddr, ServerError> {
        self.runtime.block_on(self.server().start())
    }

    /// Stops gracefully and releases the data directory.
    pub fn stop(&self) -> Result<(), ServerError> {
        self.runtime.block_on(self.server().stop())
    }

    /// Whether the node is serving.
    pub fn is_running(&self) -> bool {
        self.server().is_running()
    }

    /// The node's identity.
    pub fn identity(&self) -> String {
        self.server().identity()
    }

    /// The node's epoch.
    pub fn epoch(&self) -> u64 {
        self.server().epoch()
    }

    /// The bound address while running.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.server().local_addr()
    }

    /// Heartbeats this node has answered since it was built.
    pub fn heartbeats_answered(&self) -> u64 {
        self.server().heartbeats_answered()
    }

    /// Every registered peer's status.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.runtime.block_on(self.server().peers())
    }

    /// How many registered peers are unknown, alive and unreachable; see
    /// [`HeartbeatServer::peer_counts`].
    pub fn peer_counts(&self) -> StateCounts {
        self.runtime.block_on(self.server().peer_counts())
    }

    /// Peer events from now on, on a channel: `recv_timeout` waits for one.
    pub fn events(&self) -> std::sync::mpsc::Receiver<PeerEvent> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut stream = self.server().events();
        self.runtime.spawn(async move {
            while let Some(event) = stream.next().await {
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        rx
    }

    /// The instance id publishers see when this node subscribes.
    pub fn instance_id(&self) -> uuid::Uuid {
        self.server().instance_id()
    }

    /// Every topic this node publishes; see
    /// [`crate::HeartbeatServer::topics`].
    pub fn topics(&self) -> Vec<crate::TopicStats> {
        self.server().topics()
    }

    /// Publishes `topic` from this node; see
    /// [`crate::HeartbeatServer::create_publisher`]. The publisher runs on
    /// this server's runtime, so its heartbeats need no runtime of the
    /// caller's.
    pub fn create_publisher(&self, topic: &str) -> Result<TopicPublisher, TopicError> {
        Ok(TopicPublisher {
            inner: self.server().create_publisher(topic)?,
            runtime: self.runtime.handle().clone(),
        })
    }

    /// Subscribes this node to `topic` published at `publisher`; see
    /// [`crate::HeartbeatServer::subscribe`]. `handler` is called on this
    /// server's runtime threads; the subscription lasts until the returned
    /// handle is dropped.
    pub fn subscribe(
        &self,
        topic: &str,
        publisher: SocketAddr,
        handler: impl TopicHandler,
    ) -> Result<TopicSubscriber, TopicError> {
        let _entered = self.runtime.enter();
        self.server().subscribe(topic, publisher, handler)
    }

    /// Registers a peer directly with this node.
    pub fn register_peer(
        &self,
        request: proto::RegisterPeerRequest,
    ) -> Result<proto::RegisterPeerResponse, NodeError> {
        self.runtime.block_on(self.server().register_peer(request))
    }

    /// Deregisters a peer directly.
    pub fn deregister_peer(
        &self,
        request: proto::DeregisterPeerRequest,
    ) -> Result<proto::DeregisterPeerResponse, NodeError> {
        self.runtime
            .block_on(self.server().deregister_peer(request))
    }
}

/// A topic published from a blocking [`HeartbeatServer`]: the async
/// [`crate::TopicPublisher`], with each waiting call run to completion on
/// the server's runtime.
#[derive(Debug, Clone)]
pub struct TopicPublisher {
    inner: crate::TopicPublisher,
    runtime: tokio::runtime::Handle,
}

impl TopicPublisher {
    /// The topic's name.
    pub fn topic(&self) -> &str {
        self.inner.topic()
    }

    /// Sends `payload` to every subscriber; returns to how many it was
    /// queued. Blocks while a subscriber's queue is full, at most for the
    /// stall timeout; see [`crate::TopicPublisher::send`].
    pub fn send(&self, payload: impl Into<Vec<u8>>) -> usize {
        self.runtime.block_on(self.inner.send(payload))
    }

    /// Sends a request and collects the responses that arrive within
    /// `timeout`; see [`crate::TopicPublisher::request`].
    pub fn request(&self, payload: impl Into<Vec<u8>>, timeout: Duration) -> Vec<TopicResponse> {
        self.runtime.block_on(self.inner.request(payload, timeout))
    }

    /// Starts heartbeating the topic's clients; `listener` hears each
    /// client instance connect and disconnect. See
    /// [`crate::TopicPublisher::activate_heartbeats`].
    pub fn activate_heartbeats(
        &self,
        listener: impl ClientConnectionListener,
        params: HeartbeatParameters,
    ) -> Result<(), TopicError> {
        let _entered = self.runtime.enter();
        self.inner.activate_heartbeats(listener, params)
    }

    /// Stops heartbeats and waits until no listener callback runs any more
    /// (so not from inside one: it would wait for itself).
    pub fn deactivate_heartbeats(&self) {
        self.runtime
            .block_on(self.inner.deactivate_heartbeats_and_wait());
    }

    /// Whether heartbeats are active.
    pub fn is_heartbeats_active(&self) -> bool {
        self.inner.is_heartbeats_active()
    }

    /// Instance ids of the subscription streams open now.
    pub fn subscribers(&self) -> Vec<uuid::Uuid> {
        self.inner.subscribers()
    }

    /// Heartbeat requests sent since the publisher was created.
    pub fn heartbeats_sent(&self) -> u64 {
        self.inner.heartbeats_sent()
    }
}

impl Drop for HeartbeatServer {
    fn drop(&mut self) {
        // Blocking inside an async context would panic; there the server's
        // own Drop still signals its tasks to stop.
        if tokio::runtime::Handle::try_current().is_err() {
            let _ = self.runtime.block_on(self.server.stop());
        }
    }
}

/// A client driven from blocking code, as in the seed:
/// `HeartbeatClient::new(host, port, deadline, worker_count)?`, then
/// `start()?` before the first call.
pub struct HeartbeatClient {
    host: String,
    port: u16,
    deadline: Duration,
    worker_count: usize,
    tls: Option<crate::TlsClientConfig>,
    token: Option<String>,
    running: Option<(Runtime, crate::HeartbeatClient)>,
}

impl std::fmt::Debug for HeartbeatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeartbeatClient")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("deadline", &self.deadline)
            .field("running", &self.is_running())
            .finish()
    }
}

impl HeartbeatClient {
    /// Validates the settings; nothing connects until the first call after `start`.
    pub fn new(
        host: &str,
        port: u16,
        deadline: Duration,
        worker_count: usize,
    ) -> Result<Self, ClientError> {
        crate::client::target_of(host, port, deadline)?;
        if !(1..=1024).contains(&worker_count) {
            return Err(heartbeater_core::ValidationError::new(
                "worker_count",
                format!("{worker_count}; must be 1 to 1024"),
            )
            .into());
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            deadline,
            worker_count,
            tls: None,
            token: None,
            running: None,
        })
    }

    /// Connect over TLS (see [`crate::HeartbeatClientBuilder::tls`]);
    /// takes effect at the next `start`.
    pub fn with_tls(mut self, tls: crate::TlsClientConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Send this bearer token with every call; takes effect at the next `start`.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Creates the runtime and the connection (lazily). Starting a started
    /// client is a no-op.
    pub fn start(&mut self) -> Result<(), ClientError> {
        if self.running.is_some() {
            return Ok(());
        }
        let rt =
            runtime(self.worker_count, "heartbeater-client").map_err(|e| ClientError::Rpc {
                code: tonic::Code::Internal,
                message: format!("cannot create a runtime: {e}"),
            })?;
        let client = {
            let _guard = rt.enter();
            let mut builder = crate::HeartbeatClient::builder(self.host.clone(), self.port)
                .deadline(self.deadline);
            if let Some(tls) = &self.tls {
                builder = builder.tls(tls.clone());
            }
            if let Some(token) = &self.token {
                builder = builder.token(token.clone());
            }
            builder.build()?
        };
        self.running = Some((rt, client));
        Ok(())
    }

    /// Closes the connection and the runtime.
    pub fn stop(&mut self) -> Result<(), ClientError> {
        if let Some((rt, client)) = self.running.take() {
            drop(client);
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        Ok(())
    }

    /// Whether `start` was called and `stop` not since.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    fn run<T, F>(&self, f: impl FnOnce(crate::HeartbeatClient) -> F) -> Result<T, ClientError>
    where
        F: std::future::Future<Output = Result<T, ClientError>>,
    {
        let (rt, client) = self.running.as_ref().ok_or(ClientError::NotRunning)?;
        rt.block_on(f(client.clone()))
    }

    /// See [`crate::HeartbeatClient::register_peer`].
    pub fn register_peer(
        &self,
        request: proto::RegisterPeerRequest,
    ) -> Result<proto::RegisterPeerResponse, ClientError> {
        self.run(|c| async move { c.register_peer(request).await })
    }

    /// See [`crate::HeartbeatClient::deregister_peer`].
    pub fn deregister_peer(
        &self,
        request: proto::DeregisterPeerRequest,
    ) -> Result<proto::DeregisterPeerResponse, ClientError> {
        self.run(|c| async move { c.deregister_peer(request).await })
    }

    /// See [`crate::HeartbeatClient::heartbeat`].
    pub fn heartbeat(
        &self,
        message: proto::HeartbeatMessage,
    ) -> Result<proto::HeartbeatResponse, ClientError> {
        self.run(|c| async move { c.heartbeat(message).await })
    }

    /// See [`crate::HeartbeatClient::list_peers`].
    pub fn list_peers(&self) -> Result<proto::ListPeersResponse, ClientError> {
        self.run(|c| async move { c.list_peers().await })
    }
}

impl Drop for HeartbeatClient {
    fn drop(&mut self) {
        if let Some((rt, client)) = self.running.take() {
            drop(client);
            rt.shutdown_background();
        }
    }
}
