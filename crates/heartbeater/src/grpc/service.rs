//! `heartbeater.v1.HeartbeatService`: a thin adapter from gRPC to [`Node`].
//!
//! Generated types stop here; the node speaks in domain types. Errors become
//! status codes with the offending field in a standard
//! `google.rpc.BadRequest` detail, which every gRPC toolchain can decode.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::grpc::access::{Access, Gate};
use crate::grpc::convert::{event_to_proto, state_to_proto, status_to_proto, unix_micros};
use crate::node::{Node, NodeError};

/// Peers per page of a `WatchPeers` snapshot: what one watcher holds in
/// memory at a time, whatever the size of the registry.
const SNAPSHOT_PAGE: usize = 256;
use crate::grpc::proto;
use crate::grpc::proto::heartbeat_service_server::HeartbeatService;

/// The gRPC face of a node.
pub(crate) struct HeartbeatGrpc {
    node: Arc<Node>,
    shutdown: watch::Receiver<bool>,
    gate: Gate,
    watchers: Arc<AtomicUsize>,
    max_watchers: usize,
}

impl HeartbeatGrpc {
    pub(crate) fn new(
        node: Arc<Node>,
        shutdown: watch::Receiver<bool>,
        gate: Gate,
        max_watchers: usize,
    ) -> Self {
        Self {
            node,
            shutdown,
            gate,
            watchers: Arc::default(),
            max_watchers,
        }
    }
}

/// One open `WatchPeers` stream's place under the limit; given back on drop.
struct WatcherSlot(Arc<AtomicUsize>);

impl WatcherSlot {
    fn take(count: &Arc<AtomicUsize>, limit: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(count.clone()))
    }
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Invalid(v) => {
                let details = ErrorDetails::with_bad_request_violation(v.field, v.reason.clone());
                Status::with_error_details(Code::InvalidArgument, v.to_string(), details)
            }
            NodeError::UnknownPeer(_) => Status::not_found(e.to_string()),
            NodeError::Store(_) => Status::internal(e.to_string()),
            NodeError::ShuttingDown => Status::unavailable(e.to_string()),
            NodeError::Busy { .. } => Status::resource_exhausted(e.to_string()),
            NodeError::RegistryFull { .. } | NodeError::OverHeartbeatBudget { .. } => {
                Status::resource_exhausted(e.to_string())
            }
        }
    }
}

type EventStreamResult = Pin<Box<dyn Stream<Item = Result<proto::PeerEvent, Status>> + Send>>;

#[tonic::async_trait]
impl HeartbeatService for HeartbeatGrpc {
    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatMessage>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        self.gate.check(request.metadata(), Access::Read)?;
        Ok(Response::new(self.node.heartbeat(request.get_ref())?))
    }

    async fn register_peer(
        &self,
        request: Request<proto::RegisterPeerRequest>,
    ) -> Result<Response<proto::RegisterPeerResponse>, Status> {
        self.gate.check(request.metadata(), Access::Write)?;
        Ok(Response::new(
            self.node.register(request.into_inner(), true).await?,
        ))
    }

    async fn deregister_peer(
        &self,
        request: Request<proto::DeregisterPeerRequest>,
    ) -> Result<Response<proto::DeregisterPeerResponse>, Status> {
        self.gate.check(request.metadata(), Access::Write)?;
        Ok(Response::new(
            self.node.deregister(request.into_inner()).await?,
        ))
    }

    async fn list_peers(
        &self,
        request: Request<proto::ListPeersRequest>,
    ) -> Result<Response<proto::ListPeersResponse>, Status> {
        self.gate.check(request.metadata(), Access::Read)?;
        let request = request.into_inner();
        let after =
            crate::grpc::paging::after_of_token(&request.page_token).map_err(NodeError::from)?;
        let limit = crate::grpc::paging::page_size(request.page_size);
        let permit = self.node.heavy_read()?;
        let (page, more) = self.node.peers_page(after, limit).await?;
        drop(permit);
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => crate::grpc::paging::token_after(&last.peer_id),
            _ => String::new(),
        };
        // The quarantine rides on the first page, no more of it than a page
        // of peers, so a damaged directory cannot make one answer huge.
        let quarantined = if request.page_token.is_empty() {
            let mut list = self.node.quarantined();
            list.truncate(crate::grpc::paging::DEFAULT_PAGE_SIZE);
            list.into_iter()
                .map(|q| proto::QuarantinedPeer {
                    peer_id: q.peer_id,
                    reason: q.reason,
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(proto::ListPeersResponse {
            peers: page.into_iter().map(status_to_proto).collect(),
            server_id: self.node.identity().to_owned(),
            server_epoch: self.node.epoch(),
            next_page_token,
            quarantined,
        }))
    }

    type WatchPeersStream = EventStreamResult;

    async fn watch_peers(
        &self,
        request: Request<proto::WatchPeersRequest>,
    ) -> Result<Response<Self::WatchPeersStream>, Status> {
        self.gate.check(request.metadata(), Access::Read)?;
        let slot = WatcherSlot::take(&self.watchers, self.max_watchers).ok_or_else(|| {
            Status::resource_exhausted(format!(
                "{} watchers are open, the most this node serves; close one or raise --max-watchers",
                self.max_watchers
            ))
        })?;
        // Subscribe before the snapshot: an event may then appear in both, but
        // none can fall between them.
        let mut events = self.node.subscribe();
        let server_id = self.node.identity().to_owned();
        // A snapshot is streamed a page at a time from the published view,
        // never built whole: its cost is one page of memory. It counts as
        // one of the node's heavy reads while it copies a page, not while
        // it waits for the client to take one: a watcher that stops
        // reading must not hold a place others need.
        let snapshot = if request.get_ref().include_snapshot {
            Some(self.node.heavy_read()?)
        } else {
            None
        };
        let node = self.node.clone();
        let (tx, rx) = mpsc::channel(64);
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Some(first) = snapshot {
                let now = unix_micros(std::time::SystemTime::now());
                let mut after: Option<String> = None;
                let mut permit = Some(first);
                loop {
                    let held = match permit.take() {
                        Some(held) => held,
                        None => match node.heavy_read_when_free().await {
                            Some(held) => held,
                            None => return,
                        },
                    };
                    let Ok((page, more)) = node.peers_page(after.take(), SNAPSHOT_PAGE).await
                    else {
                        return;
                    };
                    drop(held);
                    after = page.last().map(|s| s.peer_id.clone());
                    for s in page {
                        let e = proto::PeerEvent {
                            kind: proto::PeerEventKind::Snapshot.into(),
                            peer_id: s.peer_id,
                            state: state_to_proto(s.state).into(),
                            epoch: s.epoch,
                            previous_epoch: None,
                            observed_id: String::new(),
                            timestamp_micros: now,
                            server_id: server_id.clone(),
                        };
                        if tx.send(Ok(e)).await.is_err() {
                            return;
                        }
                    }
                    if !more {
                        break;
                    }
                }
            }
            loop {
                let item = tokio::select! {
                    _ = shutdown.changed() => return,
                    () = tx.closed() => return,
                    r = events.recv() => r,
                };
                let msg = match item {
                    Ok(e) => Ok(event_to_proto(e, &server_id)),
                    Err(broadcast::error::RecvError::Lagged(n)) => Err(Status::resource_exhausted(format!(
                        "watcher fell {n} events behind; watch again (with include_snapshot) to resynchronise"
                    ))),
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let last = msg.is_err();
                if tx.send(msg).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
