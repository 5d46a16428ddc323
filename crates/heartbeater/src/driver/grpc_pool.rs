//! Heartbeats over unary gRPC: one lazily connected channel per peer address,
//! and the future of each call.
//!
//! Used for peers that do not answer datagrams (or on nodes without UDP).
//! A call's answer is matched to its heartbeat by construction: it is the
//! response to the request on a connection this node opened.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use heartbeater_core::ProbeId;
use tonic::transport::Channel;

use crate::driver::outbound::Outbound;
use crate::grpc::proto::heartbeat_service_client::HeartbeatServiceClient;
use crate::grpc::proto::HeartbeatMessage;

/// What became of one heartbeat sent over gRPC: the responder's identity and
/// epoch, or nothing (an error status, a broken connection, the timeout).
pub(crate) struct GrpcOutcome {
    pub(crate) id: ProbeId,
    pub(crate) reply: Option<(String, u64)>,
}

/// The largest heartbeat reply read: an identity of the longest valid
/// form and an epoch take a few hundred bytes, and a "peer" answering with
/// megabytes must not make the node decode them (tonic's default is 4 MiB
/// per reply). A longer reply fails the call, as a miss.
const MAX_HEARTBEAT_REPLY: usize = 4096;

/// A heartbeat call in flight.
pub(crate) type GrpcCall = Pin<Box<dyn Future<Output = GrpcOutcome> + Send>>;

/// The gRPC channels of a node's driver, by peer address.
pub(crate) struct GrpcPool {
    identity: String,
    epoch: u64,
    outbound: Outbound,
    /// The outbound generation the pooled channels were made with.
    generation: u64,
    clients: HashMap<(String, u16), HeartbeatServiceClient<Channel>>,
}

impl GrpcPool {
    pub(crate) fn new(identity: String, epoch: u64, outbound: Outbound) -> Self {
        let generation = outbound.generation();
        Self {
            identity,
            epoch,
            outbound,
            generation,
            clients: HashMap::new(),
        }
    }

    fn client(
        &mut self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Option<HeartbeatServiceClient<Channel>> {
        let generation = self.outbound.generation();
        if generation != self.generation {
            // New certificates or token: connections made with the old ones go.
            self.clients.clear();
            self.generation = generation;
        }
        if let Some(c) = self.clients.get(&(host.to_owned(), port)) {
            return Some(c.clone());
        }
        let endpoint = match self.outbound.endpoint(host, port) {
            Ok(endpoint) => endpoint.connect_timeout(timeout),
            Err(e) => {
                tracing::debug!(host, port, error = %e, "no gRPC channel to this peer");
                return None;
            }
        };
        // Names are looked up on the resolver's own threads, never on the
        // runtime's blocking pool.
        let channel =
            endpoint.connect_with_connector_lazy(crate::resolver::http_connector(timeout));
        let client =
            HeartbeatServiceClient::new(channel).max_decoding_message_size(MAX_HEARTBEAT_REPLY);
        self.clients.insert((host.to_owned(), port), client.clone());
        Some(client)
    }

    /// Closes the channel to an address whose peers answer over UDP again.
    pub(crate) fn close(&mut self, host: &str, port: u16) {
        if !self.clients.is_empty() {
            self.clients.remove(&(host.to_owned(), port));
        }
    }

    /// Drops channels to addresses no peer uses any more; `in_use` lists
    /// every registered peer's address.
    pub(crate) fn retain_used<'a>(
        &mut self,
        peers: usize,
        in_use: impl Iterator<Item = (&'a str, u16)>,
    ) {
        if self.clients.len() <= peers {
            return;
        }
        let in_use: HashSet<(String, u16)> = in_use.map(|(h, p)| (h.to_owned(), p)).collect();
        self.clients.retain(|addr, _| in_use.contains(addr));
    }

    /// Starts heartbeat `id` to `host:port`; the call gives up after
    /// `timeout`. `None` if no channel could be made (an address tonic cannot
    /// parse): the caller counts the path as failed.
    pub(crate) fn call(
        &mut self,
        host: &str,
        port: u16,
        id: ProbeId,
        timeout: Duration,
    ) -> Option<GrpcCall> {
        let mut client = self.client(host, port, timeout)?;
        let token = self.outbound.token();
        let message = HeartbeatMessage {
            client_id: self.identity.clone(),
            client_epoch: self.epoch,
        };
        Some(Box::pin(async move {
            let mut request = tonic::Request::new(message);
            request.set_timeout(timeout);
            if let Some(token) = token {
                request.metadata_mut().insert("authorization", token);
            }
            let reply = match tokio::time::timeout(timeout, client.heartbeat(request)).await {
                Ok(Ok(resp)) => {
                    let r = resp.into_inner();
                    Some((r.server_id, r.server_epoch))
                }
                Ok(Err(status)) => {
                    tracing::trace!(%status, "heartbeat failed");
                    None
                }
                Err(_elapsed) => None,
            };
            GrpcOutcome { id, reply }
        }))
    }
}
