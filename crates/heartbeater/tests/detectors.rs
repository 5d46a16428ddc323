//! Each registration names the rule it is judged by (the count rule or phi
//! accrual) and its hysteresis; the node has defaults for both; the choice
//! is checked field by field, reported in `ListPeers` and kept across a
//! restart of the monitor.

mod common;

use std::time::{Duration, Instant};

use common::*;
use heartbeater::proto::Detector;
use heartbeater::{
    DefaultDetector, DetectorKind, HeartbeatClient, HeartbeatServer, NodeError, PeerEventKind,
    RegisterPeerRequest,
};

fn phi(mut request: RegisterPeerRequest) -> RegisterPeerRequest {
    request.detector = Some(Detector::PhiAccrual as i32);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phi_peer_is_listed_as_such_and_convicted_when_it_dies() {
    let monitor = memory_node().await;
    let peer = memory_node().await;
    let peer_id = peer.identity();
    let mut events = monitor.events();
    let mut request = phi(registration(&peer, 50));
    request.rise = Some(2);
    monitor.register_peer(request).await.unwrap();
    next_event(&mut events, &peer_id, |k| *k == PeerEventKind::PeerUp).await;

    let addr = monitor.local_addr().unwrap();
    let client = HeartbeatClient::new("127.0.0.1", addr.port(), PATIENCE).unwrap();
    let listed = client.list_peers().await.unwrap();
    let status = listed.peers.iter().find(|p| p.peer_id == peer_id).unwrap();
    assert_eq!(status.detector, Detector::PhiAccrual as i32);
    assert_eq!(status.rise, 2);
    let known = status_of(&monitor, &peer_id).await;
    let DetectorKind::PhiAccrual(params) = known.detector.kind else {
        panic!("{:?}", known.detector.kind)
    };
    assert_eq!(params.threshold(), 8.0);

    // Steady answers every 50 ms: convicted about 50 + 50 + 5.2 x 12.5 ms
    // after the last one, evaluated at each heartbeat.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bound = known.detector.detection_bound();
    peer.stop().await.unwrap();
    let stopped = Instant::now();
    next_event(&mut events, &peer_id, |k| *k == PeerEventKind::PeerDown).await;
    let took = stopped.elapsed();
    assert!(
        took <= bound + Duration::from_millis(500),
        "phi convicted after {took:?}, steady bound {bound:?}"
    );
}

async fn status_of(node: &HeartbeatServer, peer_id: &str) -> heartbeater::PeerStatus {
    status(node, peer_id).await.expect("registered")
}

#[tokio::test]
async fn phi_settings_are_checked_and_named() {
    let monitor = memory_node().await;
    let peer = idle_peer("p");
    let cases: Vec<(RegisterPeerRequest, &str)> = vec![
        (
            RegisterPeerRequest {
                phi_threshold: Some(0.5),
                ..phi(peer.clone())
            },
            "phi_threshold",
        ),
        (
            RegisterPeerRequest {
                phi_threshold: Some(f64::NAN),
                ..phi(peer.clone())
            },
            "phi_threshold",
        ),
        (
            RegisterPeerRequest {
                acceptable_pause_millis: Some(-1),
                ..phi(peer.clone())
            },
            "acceptable_pause_millis",
        ),
        (
            RegisterPeerRequest {
                min_std_dev_millis: Some(0),
                ..phi(peer.clone())
            },
            "min_std_dev_millis",
        ),
        (
            // Phi settings on a count-rule registration are a mistake.
            RegisterPeerRequest {
                phi_threshold: Some(8.0),
                ..peer.clone()
            },
            "phi_threshold",
        ),
        (
            RegisterPeerRequest {
                detector: Some(7),
                ..peer.clone()
            },
            "detector",
        ),
        (
            RegisterPeerRequest {
                rise: Some(0),
                ..peer.clone()
            },
            "rise",
        ),
        (
            RegisterPeerRequest {
                rise: Some(101),
                ..peer.clone()
            },
            "rise",
        ),
    ];
    for (request, field) in cases {
        match monitor.register_peer(request.clone()).await {
            Err(NodeError::Invalid(e)) => assert_eq!(e.field, field, "{request:?}"),
            other => panic!("{request:?}: {other:?}"),
        }
    }
    assert!(monitor.peers().await.is_empty(), "nothing was registered");
}

#[tokio::test]
async fn the_node_default_applies_to_registrations_that_name_no_rule() {
    let dir = tempfile::tempdir().unwrap();
    let build = || {
        HeartbeatServer::builder()
            .server_port(0)
            .data_dir(dir.path())
            .default_detector(DefaultDetector::PhiAccrual { threshold: 12.0 })
            .default_rise(3)
    };
    let monitor = build().build().unwrap();
    monitor.start().await.unwrap();
    monitor
        .register_peer(idle_peer("by-default"))
        .await
        .unwrap();
    monitor
        .register_peer(RegisterPeerRequest {
            detector: Some(Detector::MissCount as i32),
            rise: Some(1),
            ..idle_peer("counted")
        })
        .await
        .unwrap();
    let check = |statuses: Vec<heartbeater::PeerStatus>| {
        let by_default = statuses.iter().find(|s| s.peer_id == "by-default").unwrap();
        let DetectorKind::PhiAccrual(params) = by_default.detector.kind else {
            panic!("{:?}", by_default.detector.kind)
        };
        assert_eq!(params.threshold(), 12.0);
        assert_eq!(by_default.detector.rise.get(), 3);
        let counted = statuses.iter().find(|s| s.peer_id == "counted").unwrap();
        assert_eq!(counted.detector.kind, DetectorKind::MissCount);
        assert_eq!(counted.detector.rise.get(), 1);
    };
    check(monitor.peers().await);
    monitor.stop().await.unwrap();
    drop(monitor);
    // Restored from the registry with the rule each was registered with,
    // even by a node whose default has changed.
    let restarted = HeartbeatServer::builder()
        .server_port(0)
        .data_dir(dir.path())
        .build()
        .unwrap();
    check(restarted.peers().await);
    assert!(matches!(
        HeartbeatServer::builder()
            .in_memory()
            .default_rise(0)
            .build()
            .unwrap_err(),
        heartbeater::ServerError::InvalidConfig {
            field: "default_rise",
            ..
        }
    ));
}
