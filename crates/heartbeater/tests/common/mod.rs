//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use heartbeater::{
    HeartbeatServer, PeerEvent, PeerEventKind, PeerState, PeerStatus, RegisterPeerRequest,
};
use tokio_stream::StreamExt;

/// Generous upper bound for anything that should happen "soon": tests assert
/// behaviour, the benchmark measures speed.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub async fn memory_node() -> HeartbeatServer {
    let server = HeartbeatServer::builder()
        .server_port(0)
        .in_memory()
        .build()
        .expect("build");
    server.start().await.expect("start");
    server
}

/// A node on `dir` listening on `port` (0: any), started.
pub async fn node_on(dir: &std::path::Path, port: u16) -> HeartbeatServer {
    let server = HeartbeatServer::builder()
        .server_port(port)
        .data_dir(dir)
        .build()
        .expect("build on data dir");
    server.start().await.expect("start");
    server
}

pub fn registration(peer: &HeartbeatServer, freq_ms: i64) -> RegisterPeerRequest {
    let addr = peer.local_addr().expect("peer running");
    RegisterPeerRequest {
        peer_id: peer.identity(),
        peer_host: addr.ip().to_string(),
        peer_port: u32::from(addr.port()),
        heartbeat_freq_millis: freq_ms,
        timeout_millis: None,
        max_missed: None,
        ..Default::default()
    }
}

/// A registration of `id` at the discard port, heartbeated once an hour:
/// a peer that costs the node nothing, for tests about the registry.
pub fn idle_peer(id: &str) -> RegisterPeerRequest {
    RegisterPeerRequest {
        peer_id: id.into(),
        peer_host: "127.0.0.1".into(),
        peer_port: 9,
        heartbeat_freq_millis: 3_600_000,
        ..Default::default()
    }
}

/// Polls `f` every few milliseconds until it returns `Some`, or panics with
/// `what` after `PATIENCE`.
pub async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Like [`eventually`], for a check that has to await.
pub async fn eventually_async<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn status(server: &HeartbeatServer, peer_id: &str) -> Option<PeerStatus> {
    server
        .peers()
        .await
        .into_iter()
        .find(|p| p.peer_id == peer_id)
}

/// Waits until `peer_id` is in `state` on `server`, or panics after
/// [`PATIENCE`] (or `patience`, with [`wait_state_within`]).
pub async fn wait_state(server: &HeartbeatServer, peer_id: &str, state: PeerState) -> PeerStatus {
    wait_state_within(server, peer_id, state, PATIENCE).await
}

pub async fn wait_state_within(
    server: &HeartbeatServer,
    peer_id: &str,
    state: PeerState,
    patience: Duration,
) -> PeerStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = status(server, peer_id).await.filter(|s| s.state == state) {
            return s;
        }
        assert!(
            start.elapsed() < patience,
            "timed out after {patience:?} waiting for {peer_id} to be {state}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits for the next event of `kind` about `peer_id`.
pub async fn next_event(
    events: &mut heartbeater::EventStream,
    peer_id: &str,
    kind: fn(&PeerEventKind) -> bool,
) -> PeerEvent {
    tokio::time::timeout(PATIENCE, async {
        while let Some(e) = events.next().await {
            if e.peer_id == peer_id && kind(&e.kind) {
                return e;
            }
        }
        panic!("event stream ended");
    })
    .await
    .expect("timed out waiting for an event")
}
pub mod certs;
