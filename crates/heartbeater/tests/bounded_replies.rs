//! A peer's answers over gRPC are read only up to what a heartbeat reply
//! can be: a "peer" that answers with megabytes is a failed heartbeat, not
//! an identity the node decodes, compares, reports and keeps.

use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use heartbeater::proto::heartbeat_service_server::{HeartbeatService, HeartbeatServiceServer};
use heartbeater::proto::{
    DeregisterPeerRequest, DeregisterPeerResponse, HeartbeatMessage, HeartbeatResponse,
    ListPeersRequest, ListPeersResponse, PeerEvent, RegisterPeerRequest, RegisterPeerResponse,
    WatchPeersRequest,
};
use heartbeater::{HeartbeatServer, PeerEventKind};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

/// Answers every heartbeat with an identity of `size` bytes.
struct Huge {
    size: usize,
}

type Events = Pin<Box<dyn Stream<Item = Result<PeerEvent, Status>> + Send>>;

#[tonic::async_trait]
impl HeartbeatService for Huge {
    async fn heartbeat(
        &self,
        _: Request<HeartbeatMessage>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        Ok(Response::new(HeartbeatResponse {
            server_id: "x".repeat(self.size),
            server_epoch: 1,
        }))
    }
    async fn register_peer(
        &self,
        _: Request<RegisterPeerRequest>,
    ) -> Result<Response<RegisterPeerResponse>, Status> {
        Err(Status::unimplemented("a fake peer"))
    }
    async fn deregister_peer(
        &self,
        _: Request<DeregisterPeerRequest>,
    ) -> Result<Response<DeregisterPeerResponse>, Status> {
        Err(Status::unimplemented("a fake peer"))
    }
    async fn list_peers(
        &self,
        _: Request<ListPeersRequest>,
    ) -> Result<Response<ListPeersResponse>, Status> {
        Err(Status::unimplemented("a fake peer"))
    }
    type WatchPeersStream = Events;
    async fn watch_peers(&self, _: Request<WatchPeersRequest>) -> Result<Response<Events>, Status> {
        Err(Status::unimplemented("a fake peer"))
    }
}

/// A fake peer on 127.0.0.1 answering with identities of `size` bytes.
async fn fake_peer(size: usize) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                HeartbeatServiceServer::new(Huge { size }).max_encoding_message_size(usize::MAX),
            )
            .serve_with_incoming(incoming),
    );
    port
}

/// What a monitor heartbeating (over gRPC only) a fake peer answering with
/// `size`-byte identities reports within a second: identity mismatches seen.
async fn mismatches_reported(size: usize) -> usize {
    let monitor = HeartbeatServer::builder()
        .server_port(0)
        .in_memory()
        .udp_heartbeats(false)
        .build()
        .unwrap();
    monitor.start().await.unwrap();
    let mut events = monitor.events();
    let port = fake_peer(size).await;
    monitor
        .register_peer(heartbeater::RegisterPeerRequest {
            peer_id: "the-real-one".into(),
            peer_host: "127.0.0.1".into(),
            peer_port: u32::from(port),
            heartbeat_freq_millis: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut mismatches = 0;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(e) = events.next().await {
            if matches!(e.kind, PeerEventKind::IdentityMismatch { .. }) {
                mismatches += 1;
            }
        }
    })
    .await;
    monitor.stop().await.unwrap();
    mismatches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_larger_than_any_heartbeat_is_not_read() {
    // An ordinary wrong identity is decoded and reported: the fake works.
    assert!(mismatches_reported(64).await > 0);
    // One of 1 MiB is never decoded, so never compared or reported.
    assert_eq!(mismatches_reported(1 << 20).await, 0);
}

/// A connection to the peer's address that answers as another node is not
/// kept: the next heartbeat connects afresh (and a peer registered by name
/// is looked up again), so a name that moved is followed even while the
/// old address still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_answers_as_another_node_is_not_kept() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(move |s| {
        counted.fetch_add(1, Ordering::Relaxed);
        s
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HeartbeatServiceServer::new(Huge { size: 8 }))
            .serve_with_incoming(incoming),
    );
    let monitor = HeartbeatServer::builder()
        .server_port(0)
        .in_memory()
        .udp_heartbeats(false)
        .build()
        .unwrap();
    monitor.start().await.unwrap();
    monitor
        .register_peer(heartbeater::RegisterPeerRequest {
            peer_id: "the-real-one".into(),
            peer_host: "127.0.0.1".into(),
            peer_port: u32::from(port),
            heartbeat_freq_millis: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    monitor.stop().await.unwrap();
    let connections = accepted.load(Ordering::Relaxed);
    assert!(
        connections >= 3,
        "{connections} connection(s) for about 10 heartbeats answered by another node"
    );
}
