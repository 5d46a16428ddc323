//! Bad input gets a clear, typed error naming what is wrong; never a panic.

mod common;

use std::time::Duration;

use common::*;
use heartbeater::proto::heartbeat_service_client::HeartbeatServiceClient;
use heartbeater::{
    ClientError, DeregisterPeerRequest, HeartbeatClient, HeartbeatServer, RegisterPeerRequest,
    ServerError, StoreError,
};
use tonic::Code;
use tonic_types::StatusExt;

fn valid() -> RegisterPeerRequest {
    RegisterPeerRequest {
        peer_id: "peer-1".into(),
        peer_host: "127.0.0.1".into(),
        peer_port: 9,
        heartbeat_freq_millis: 100,
        timeout_millis: None,
        max_missed: None,
        ..Default::default()
    }
}

#[tokio::test]
async fn every_bad_registration_field_is_invalid_argument_naming_the_field() {
    let node = memory_node().await;
    let url = format!("http://{}", node.local_addr().unwrap());
    let mut raw = HeartbeatServiceClient::connect(url).await.unwrap();
    let long_id = "x".repeat(257);
    let cases: Vec<(&str, RegisterPeerRequest)> = vec![
        (
            "peer_port",
            RegisterPeerRequest {
                peer_port: 0,
                ..valid()
            },
        ),
        (
            "peer_port",
            RegisterPeerRequest {
                peer_port: 65536,
                ..valid()
            },
        ),
        (
            "heartbeat_freq_millis",
            RegisterPeerRequest {
                heartbeat_freq_millis: 0,
                ..valid()
            },
        ),
        (
            "heartbeat_freq_millis",
            RegisterPeerRequest {
                heartbeat_freq_millis: -100,
                ..valid()
            },
        ),
        (
            "heartbeat_freq_millis",
            RegisterPeerRequest {
                heartbeat_freq_millis: 3_600_001,
                ..valid()
            },
        ),
        (
            "peer_id",
            RegisterPeerRequest {
                peer_id: String::new(),
                ..valid()
            },
        ),
        (
            "peer_id",
            RegisterPeerRequest {
                peer_id: long_id,
                ..valid()
            },
        ),
        (
            "peer_host",
            RegisterPeerRequest {
                peer_host: String::new(),
                ..valid()
            },
        ),
        (
            "peer_host",
            RegisterPeerRequest {
                peer_host: "not a host".into(),
                ..valid()
            },
        ),
        (
            "peer_host",
            RegisterPeerRequest {
                peer_host: "300.1.1.1".into(),
                ..valid()
            },
        ),
        (
            "timeout_millis",
            RegisterPeerRequest {
                timeout_millis: Some(-1),
                ..valid()
            },
        ),
        (
            "timeout_millis",
            RegisterPeerRequest {
                timeout_millis: Some(0),
                ..valid()
            },
        ),
        (
            "timeout_millis",
            RegisterPeerRequest {
                timeout_millis: Some(i64::MAX),
                ..valid()
            },
        ),
        (
            "max_missed",
            RegisterPeerRequest {
                max_missed: Some(0),
                ..valid()
            },
        ),
        (
            "max_missed",
            RegisterPeerRequest {
                max_missed: Some(1_000_000),
                ..valid()
            },
        ),
    ];
    for (field, request) in cases {
        let status = raw.register_peer(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {request:?}");
        assert!(
            status.message().contains(field),
            "message names {field}: {}",
            status.message()
        );
        let details = status.get_error_details();
        let violation = &details
            .bad_request()
            .expect("BadRequest detail")
            .field_violations[0];
        assert_eq!(violation.field, field);
    }
    assert!(
        node.peers().await.is_empty(),
        "nothing invalid was registered"
    );
}

#[tokio::test]
async fn the_client_reports_the_field_and_unknown_peers() {
    let node = memory_node().await;
    let port = node.local_addr().unwrap().port();
    let client = HeartbeatClient::new("127.0.0.1", port, Duration::from_secs(2)).unwrap();
    let err = client
        .register_peer(RegisterPeerRequest {
            peer_port: 0,
            ..valid()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::InvalidArgument { field: Some(f), .. } if f == "peer_port"),
        "{err:?}"
    );
    let err = client
        .deregister_peer(DeregisterPeerRequest {
            peer_id: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NotFound(_)), "{err:?}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn registering_twice_updates_the_record() {
    let node = memory_node().await;
    let first = node.register_peer(valid()).await.unwrap();
    assert!(!first.updated);
    let again = node.register_peer(valid()).await.unwrap();
    assert!(again.updated);
    let changed = node
        .register_peer(RegisterPeerRequest {
            heartbeat_freq_millis: 250,
            ..valid()
        })
        .await
        .unwrap();
    assert!(changed.updated);
    let peers = node.peers().await;
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].detector.heartbeat_freq, Duration::from_millis(250));
}

#[tokio::test]
async fn an_unreachable_node_is_unavailable_and_a_silent_one_exceeds_the_deadline() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = HeartbeatClient::new("127.0.0.1", closed, Duration::from_secs(2)).unwrap();
    let err = client.list_peers().await.unwrap_err();
    assert!(matches!(err, ClientError::Unavailable { .. }), "{err:?}");
    assert!(err.is_retryable());

    // Accepts connections, never speaks.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let client = HeartbeatClient::new("127.0.0.1", port, Duration::from_millis(200)).unwrap();
    let err = client.list_peers().await.unwrap_err();
    assert!(
        matches!(err, ClientError::DeadlineExceeded { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn bad_client_settings_are_refused_up_front() {
    for (host, port, deadline) in [
        ("127.0.0.1", 0, Duration::from_secs(1)),
        ("", 80, Duration::from_secs(1)),
        ("bad host", 80, Duration::from_secs(1)),
        ("127.0.0.1", 80, Duration::ZERO),
        ("127.0.0.1", 80, Duration::from_secs(7200)),
    ] {
        let err = HeartbeatClient::new(host, port, deadline).unwrap_err();
        assert!(
            matches!(err, ClientError::InvalidConfig(_)),
            "{host}:{port} {deadline:?}: {err:?}"
        );
    }
    let err =
        heartbeater::blocking::HeartbeatClient::new("127.0.0.1", 80, Duration::from_secs(1), 0)
            .unwrap_err();
    assert!(matches!(err, ClientError::InvalidConfig(_)));
}

#[tokio::test]
async fn a_port_in_use_is_a_bind_error_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let server = HeartbeatServer::builder()
        .server_port(port)
        .in_memory()
        .build()
        .unwrap();
    let err = server.start().await.unwrap_err();
    assert!(matches!(err, ServerError::Bind { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(!server.is_running());
}

#[tokio::test]
async fn bad_server_settings_are_refused_at_build() {
    let cases = [
        HeartbeatServer::builder()
            .server_host("not a host")
            .in_memory(),
        HeartbeatServer::builder().server_host("").in_memory(),
        HeartbeatServer::builder().worker_count(0).in_memory(),
        HeartbeatServer::builder().server_epoch(0).in_memory(),
    ];
    for builder in cases {
        let err = builder.build().unwrap_err();
        assert!(matches!(err, ServerError::InvalidConfig { .. }), "{err:?}");
    }
}

#[test]
fn a_data_dir_that_is_a_file_is_refused_naming_the_path() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = HeartbeatServer::builder()
        .data_dir(file.path())
        .build()
        .unwrap_err();
    assert!(
        matches!(err, ServerError::Store(StoreError::NotADirectory { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&file.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn a_data_dir_under_a_file_cannot_be_created() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().join("data");
    let err = HeartbeatServer::builder()
        .data_dir(&path)
        .build()
        .unwrap_err();
    assert!(
        matches!(err, ServerError::Store(StoreError::Io { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn a_data_dir_in_use_by_a_running_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = HeartbeatServer::builder()
        .server_port(0)
        .data_dir(dir.path())
        .build()
        .unwrap();
    first.start().await.unwrap();
    let err = HeartbeatServer::builder()
        .data_dir(dir.path())
        .build()
        .unwrap_err();
    assert!(
        matches!(err, ServerError::Store(StoreError::InUse { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
    first.stop().await.unwrap();
}

#[test]
fn a_corrupt_data_dir_is_refused_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    drop(
        HeartbeatServer::builder()
            .data_dir(dir.path())
            .build()
            .unwrap(),
    );
    std::fs::write(dir.path().join("CURRENT"), b"garbage-without-newline").unwrap();
    let err = HeartbeatServer::builder()
        .data_dir(dir.path())
        .build()
        .unwrap_err();
    assert!(
        matches!(err, ServerError::Store(StoreError::Corrupt { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn a_full_registry_refuses_new_peers_with_resource_exhausted() {
    let node = HeartbeatServer::builder()
        .server_port(0)
        .in_memory()
        .max_peers(2)
        .build()
        .unwrap();
    node.start().await.unwrap();
    let url = format!("http://{}", node.local_addr().unwrap());
    let mut raw = HeartbeatServiceClient::connect(url).await.unwrap();
    let named = |id: &str| RegisterPeerRequest {
        peer_id: id.into(),
        ..valid()
    };
    raw.register_peer(named("a")).await.unwrap();
    raw.register_peer(named("b")).await.unwrap();
    let refused = raw.register_peer(named("c")).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("2 peers"),
        "{}",
        refused.message()
    );
    let ids: Vec<String> = node.peers().await.into_iter().map(|p| p.peer_id).collect();
    assert_eq!(ids, ["a", "b"], "nothing changed");
    // Updating a registered peer is not growing the registry.
    let update = raw
        .register_peer(RegisterPeerRequest {
            heartbeat_freq_millis: 200,
            ..named("b")
        })
        .await
        .unwrap();
    assert!(update.into_inner().updated);
    raw.deregister_peer(DeregisterPeerRequest {
        peer_id: "a".into(),
    })
    .await
    .unwrap();
    raw.register_peer(named("c")).await.unwrap();
    assert_eq!(node.peer_counts().await.total(), 2);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn by_default_the_network_may_ask_for_any_valid_period_down_to_1_ms() {
    let node = memory_node().await;
    let url = format!("http://{}", node.local_addr().unwrap());
    let mut raw = HeartbeatServiceClient::connect(url).await.unwrap();
    for (id, ms) in [("seed", 5), ("floor", 1)] {
        raw.register_peer(RegisterPeerRequest {
            peer_id: id.into(),
            heartbeat_freq_millis: ms,
            ..valid()
        })
        .await
        .unwrap_or_else(|e| panic!("{ms} ms on the defaults: {e}"));
    }
    node.stop().await.unwrap();
}

#[tokio::test]
async fn the_network_cannot_ask_for_a_faster_heartbeat_than_the_nodes_minimum() {
    let node = HeartbeatServer::builder()
        .server_port(0)
        .in_memory()
        .min_network_heartbeat_freq(Duration::from_millis(10))
        .build()
        .unwrap();
    node.start().await.unwrap();
    let url = format!("http://{}", node.local_addr().unwrap());
    let mut raw = HeartbeatServiceClient::connect(url).await.unwrap();
    let fast = RegisterPeerRequest {
        heartbeat_freq_millis: 1,
        ..valid()
    };
    let refused = raw.register_peer(fast.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let details = refused.get_error_details();
    let violation = &details.bad_request().unwrap().field_violations[0];
    assert_eq!(violation.field, "heartbeat_freq_millis");
    assert!(node.peers().await.is_empty());
    raw.register_peer(RegisterPeerRequest {
        heartbeat_freq_millis: 10,
        ..valid()
    })
    .await
    .expect("the minimum itself is fine");
    // In-process, the embedding program decides.
    node.register_peer(RegisterPeerRequest {
        peer_id: "local".into(),
        ..fast
    })
    .await
    .expect("no network minimum in-process");
    node.stop().await.unwrap();
}
