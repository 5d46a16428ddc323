//! The heartbeat budget: the heartbeats per second a node's registry may
//! demand, summed over its peers, before a registration over gRPC that
//! asks for more is refused. The accounting is exact across registrations,
//! updates, deregistrations, concurrent calls and restarts.

mod common;

use std::time::Duration;

use heartbeater::proto::heartbeat_service_client::HeartbeatServiceClient;
use heartbeater::{DeregisterPeerRequest, HeartbeatServer, RegisterPeerRequest};
use tonic::transport::Channel;
use tonic::Code;

/// A registration of `id` at the discard port, heartbeated every `freq_ms`.
fn peer(id: &str, freq_ms: i64) -> RegisterPeerRequest {
    RegisterPeerRequest {
        heartbeat_freq_millis: freq_ms,
        ..common::idle_peer(id)
    }
}

async fn client(node: &HeartbeatServer) -> HeartbeatServiceClient<Channel> {
    let url = format!("http://{}", node.local_addr().expect("running"));
    HeartbeatServiceClient::connect(url).await.expect("connect")
}

async fn start(builder: heartbeater::HeartbeatServerBuilder) -> HeartbeatServer {
    let node = builder.server_port(0).build().expect("build");
    node.start().await.expect("start");
    node
}

/// Registers over gRPC; the status message when refused.
async fn register(
    raw: &mut HeartbeatServiceClient<Channel>,
    req: RegisterPeerRequest,
) -> Result<(), tonic::Status> {
    raw.register_peer(req).await.map(|_| ())
}

/// Asserts `result` is the budget's refusal, naming the budget and what the
/// peers already demand.
fn assert_over_budget(result: Result<(), tonic::Status>, budget: &str, demand: &str) {
    let status = result.expect_err("past the budget");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
    let msg = status.message();
    assert!(msg.contains(&format!("budget of {budget}/s")), "{msg}");
    assert!(
        msg.contains(&format!("ask for {demand} heartbeats/s")),
        "{msg}"
    );
}

async fn period_of(node: &HeartbeatServer, id: &str) -> Option<Duration> {
    common::status(node, id)
        .await
        .map(|s| s.detector.heartbeat_freq)
}

#[tokio::test]
async fn a_registration_past_the_budget_is_refused_and_the_accounting_follows_every_change() {
    let node = start(
        HeartbeatServer::builder()
            .in_memory()
            .network_heartbeat_budget(10),
    )
    .await;
    let mut raw = client(&node).await;

    register(&mut raw, peer("a", 500)).await.expect("2/s");
    register(&mut raw, peer("b", 125))
        .await
        .expect("8/s more: exactly the budget");
    assert_over_budget(register(&mut raw, peer("c", 1000)).await, "10", "10");
    assert!(
        common::status(&node, "c").await.is_none(),
        "c not registered"
    );

    // An update counts the difference, not the whole period again.
    assert_over_budget(register(&mut raw, peer("b", 100)).await, "10", "10");
    assert_eq!(
        period_of(&node, "b").await,
        Some(Duration::from_millis(125)),
        "a refused update leaves the peer as it was"
    );
    register(&mut raw, peer("b", 250))
        .await
        .expect("slowing b down frees 4/s");
    register(&mut raw, peer("c", 250))
        .await
        .expect("which c takes");
    assert_over_budget(register(&mut raw, peer("d", 1000)).await, "10", "10");

    // A deregistration gives its share back.
    raw.deregister_peer(DeregisterPeerRequest {
        peer_id: "a".into(),
    })
    .await
    .expect("deregister a");
    register(&mut raw, peer("d", 500))
        .await
        .expect("a's 2/s, now d's");
    assert_over_budget(register(&mut raw, peer("e", 3_600_000)).await, "10", "10");

    // In-process, the embedding program decides; its peers count all the
    // same, and an update that asks for less is never refused.
    node.register_peer(peer("local", 100))
        .await
        .expect("in-process registrations are not bound by the budget");
    assert_over_budget(register(&mut raw, peer("e", 1000)).await, "10", "20");
    register(&mut raw, peer("b", 1000))
        .await
        .expect("asking for less, even over the budget");
    assert_eq!(node.peers().await.len(), 4);
    node.stop().await.expect("stop");
}

#[tokio::test]
async fn concurrent_registrations_share_the_budget_exactly() {
    let node = start(
        HeartbeatServer::builder()
            .in_memory()
            .network_heartbeat_budget(10),
    )
    .await;
    // Twenty calls at 2/s each against 10/s: exactly five get in, however
    // the node groups them into writes.
    let calls = (0..20).map(|i| {
        let node = &node;
        async move {
            let mut raw = client(node).await;
            register(&mut raw, peer(&format!("p{i:02}"), 500)).await
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(accepted, 5, "{results:?}");
    for refused in results.into_iter().filter(Result::is_err) {
        let status = refused.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
    }
    assert_eq!(node.peers().await.len(), 5);
    node.stop().await.expect("stop");
}

#[tokio::test]
async fn restored_peers_are_never_refused_and_count_against_the_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(
        HeartbeatServer::builder()
            .data_dir(dir.path())
            .network_heartbeat_budget(100),
    )
    .await;
    let mut raw = client(&node).await;
    for id in ["a", "b", "c"] {
        register(&mut raw, peer(id, 100)).await.expect("10/s each");
    }
    node.stop().await.expect("stop");
    drop(node);

    // A smaller budget after the restart: every stored peer is monitored
    // again, and together they are past it.
    let node = start(
        HeartbeatServer::builder()
            .data_dir(dir.path())
            .network_heartbeat_budget(20),
    )
    .await;
    assert_eq!(node.peers().await.len(), 3, "all stored peers restored");
    let mut raw = client(&node).await;
    assert_over_budget(register(&mut raw, peer("d", 1000)).await, "20", "30");
    raw.deregister_peer(DeregisterPeerRequest {
        peer_id: "a".into(),
    })
    .await
    .expect("deregister a");
    assert_over_budget(register(&mut raw, peer("d", 1000)).await, "20", "20");
    register(&mut raw, peer("b", 200))
        .await
        .expect("slowing b down frees 5/s");
    register(&mut raw, peer("d", 200))
        .await
        .expect("which d takes, up to the budget exactly");
    assert_over_budget(register(&mut raw, peer("e", 3_600_000)).await, "20", "20");
    node.stop().await.expect("stop");
}
