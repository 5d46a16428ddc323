//! Server reflection, in both versions clients speak: `grpc.reflection.v1`
//! and the older `grpc.reflection.v1alpha` that Python's
//! `grpcio-reflection` and older grpcurl, Evans and Postman builds still
//! use. Both list the same services, and both are behind the read gate.

mod common;

use heartbeater::{AuthTokens, HeartbeatServer};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_reflection::pb::{v1, v1alpha};

/// The services every node serves, whichever reflection version lists them.
const SERVICES: [&str; 4] = [
    "heartbeater.v1.HeartbeatService",
    "heartbeater.v1.TopicService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
];

async fn channel(node: &HeartbeatServer) -> Channel {
    let addr = node.local_addr().expect("running");
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

/// The services `grpc.reflection.v1` lists, or the status it answers with.
async fn list_v1(channel: Channel, token: Option<&str>) -> Result<Vec<String>, tonic::Status> {
    use v1::server_reflection_client::ServerReflectionClient;
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;
    let ask = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut request = tonic::Request::new(tokio_stream::once(ask));
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("metadata value");
        request.metadata_mut().insert("authorization", value);
    }
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(request)
        .await?
        .into_inner();
    let answer = answers.next().await.expect("one answer")?;
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => panic!("not a list of services: {other:?}"),
    }
}

/// The same through `grpc.reflection.v1alpha`: the same messages in
/// another package, hence another generated client.
async fn list_v1alpha(channel: Channel, token: Option<&str>) -> Result<Vec<String>, tonic::Status> {
    use v1alpha::server_reflection_client::ServerReflectionClient;
    use v1alpha::server_reflection_request::MessageRequest;
    use v1alpha::server_reflection_response::MessageResponse;
    let ask = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut request = tonic::Request::new(tokio_stream::once(ask));
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("metadata value");
        request.metadata_mut().insert("authorization", value);
    }
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(request)
        .await?
        .into_inner();
    let answer = answers.next().await.expect("one answer")?;
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => panic!("not a list of services: {other:?}"),
    }
}

#[tokio::test]
async fn reflection_v1_lists_the_nodes_services() {
    let node = common::memory_node().await;
    let listed = list_v1(channel(&node).await, None)
        .await
        .expect("v1 answers");
    for service in SERVICES {
        assert!(
            listed.iter().any(|s| s == service),
            "{service} in {listed:?}"
        );
    }
    node.stop().await.expect("stop");
}

#[tokio::test]
async fn reflection_v1alpha_lists_the_same_services_for_older_clients() {
    let node = common::memory_node().await;
    let listed = list_v1alpha(channel(&node).await, None)
        .await
        .expect("v1alpha answers, not UNIMPLEMENTED");
    for service in SERVICES {
        assert!(
            listed.iter().any(|s| s == service),
            "{service} in {listed:?}"
        );
    }
    assert!(
        listed
            .iter()
            .any(|s| s == "grpc.reflection.v1alpha.ServerReflection"),
        "v1alpha lists itself: {listed:?}"
    );
    let v1_listed = list_v1(channel(&node).await, None)
        .await
        .expect("v1 answers");
    assert!(
        v1_listed
            .iter()
            .any(|s| s == "grpc.reflection.v1alpha.ServerReflection"),
        "v1 lists v1alpha too: {v1_listed:?}"
    );
    node.stop().await.expect("stop");
}

#[tokio::test]
async fn with_auth_reads_both_reflection_versions_need_the_token() {
    let node = HeartbeatServer::builder()
        .server_port(0)
        .in_memory()
        .auth_tokens(AuthTokens::new(["t0ken"]).expect("tokens"))
        .auth_reads(true)
        .build()
        .expect("build");
    node.start().await.expect("start");
    let refused = list_v1(channel(&node).await, None).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::Unauthenticated,
        "v1: {refused}"
    );
    let refused = list_v1alpha(channel(&node).await, None).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::Unauthenticated,
        "v1alpha: {refused}"
    );
    list_v1(channel(&node).await, Some("t0ken"))
        .await
        .expect("v1 with the token");
    list_v1alpha(channel(&node).await, Some("t0ken"))
        .await
        .expect("v1alpha with the token");
    node.stop().await.expect("stop");
}
