//! What a helper process does in each role. Each prints one JSON "ready"
//! line, answers commands read on stdin, and exits when stdin closes.

use std::path::PathBuf;
use std::pin::Pin;

use futures_util::Stream;
use heartbeater::proto::heartbeat_service_server::{HeartbeatService, HeartbeatServiceServer};
use heartbeater::proto::{
    DeregisterPeerRequest, DeregisterPeerResponse, HeartbeatMessage, HeartbeatResponse,
    ListPeersRequest, ListPeersResponse, PeerEvent, RegisterPeerRequest, RegisterPeerResponse,
    WatchPeersRequest,
};
use heartbeater::{HeartbeatServer, LatenessSnapshot};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// Reads command lines until stdin closes.
async fn commands(mut on: impl FnMut(&str) -> serde_json::Value) -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        println!("{}", on(line.trim()));
    }
    Ok(())
}

/// A Heartbeater node on 127.0.0.1:0 (in memory unless a data dir is given).
/// Commands: `mark` (start a lateness window), `lateness` (the window's figures).
pub async fn node(data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let builder = HeartbeatServer::builder().server_port(0);
    let builder = match data_dir {
        Some(dir) => builder.data_dir(dir),
        None => builder.in_memory(),
    };
    let server = builder.build()?;
    let addr = server.start().await?;
    println!(
        "{}",
        json!({"addr": addr.to_string(), "identity": server.identity()})
    );
    let mut mark: LatenessSnapshot = server.scheduler_lateness();
    commands(|cmd| match cmd {
        "mark" => {
            mark = server.scheduler_lateness();
            json!({"ok": true})
        }
        "lateness" => {
            let window = server.scheduler_lateness().since(&mark);
            json!({
                "count": window.count(),
                "p50_us": window.quantile(0.5).as_micros() as u64,
                "p99_us": window.quantile(0.99).as_micros() as u64,
            })
        }
        other => json!({"error": format!("unknown command {other:?}")}),
    })
    .await?;
    server.stop().await?;
    Ok(())
}

/// The baseline server: answers `Heartbeat` with a response of the node's
/// size (a 36-byte id and an epoch) and does nothing else.
#[derive(Clone)]
pub struct Echo {
    pub identity: String,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<PeerEvent, Status>> + Send>>;

#[tonic::async_trait]
impl HeartbeatService for Echo {
    async fn heartbeat(
        &self,
        _: Request<HeartbeatMessage>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        Ok(Response::new(HeartbeatResponse {
            server_id: self.identity.clone(),
            server_epoch: 1,
        }))
    }
    async fn register_peer(
        &self,
        _: Request<RegisterPeerRequest>,
    ) -> Result<Response<RegisterPeerResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    async fn deregister_peer(
        &self,
        _: Request<DeregisterPeerRequest>,
    ) -> Result<Response<DeregisterPeerResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    async fn list_peers(
        &self,
        _: Request<ListPeersRequest>,
    ) -> Result<Response<ListPeersResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    type WatchPeersStream = EventStream;
    async fn watch_peers(
        &self,
        _: Request<WatchPeersRequest>,
    ) -> Result<Response<EventStream>, Status> {
        Err(Status::unimplemented("echo"))
    }
}

async fn serve_on_free_port(identity: String) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HeartbeatServiceServer::new(Echo { identity }))
            .serve_with_incoming(incoming),
    );
    Ok(port)
}

/// A plain tonic echo server (the rpc baseline).
pub async fn echo() -> anyhow::Result<()> {
    let identity = heartbeater::Uuid::new_v4().to_string();
    let port = serve_on_free_port(identity.clone()).await?;
    println!(
        "{}",
        json!({"addr": format!("127.0.0.1:{port}"), "identity": identity})
    );
    commands(|_| json!({"ok": true})).await
}

/// `count` lightweight peers: each its own listening socket and identity,
/// answering `Heartbeat` as a node would.
pub async fn responders(count: usize) -> anyhow::Result<()> {
    let mut peers = Vec::with_capacity(count);
    for _ in 0..count {
        let identity = heartbeater::Uuid::new_v4().to_string();
        let port = serve_on_free_port(identity.clone()).await?;
        peers.push(json!([port, identity]));
    }
    println!("{}", json!({ "peers": peers }));
    commands(|_| json!({"ok": true})).await
}
