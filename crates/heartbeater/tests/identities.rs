//! Peer ids are identities a node can answer with: one spelling per UUID,
//! node names, and what happens to registrations stored before the rule.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use heartbeater::proto::heartbeat_service_client::HeartbeatServiceClient;
use heartbeater::store::PeerRecord;
use heartbeater::{
    DeregisterPeerRequest, HeartbeatServer, MemoryStore, PeerState, RegistryStore, ServerError,
};
use tonic::Code;
use tonic_types::StatusExt;

const UUID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f";
const UPPER: &str = "6F1C2D3E-4A5B-4C6D-8E7F-0A1B2C3D4E5F";

fn record(id: &str) -> PeerRecord {
    PeerRecord {
        peer_id: id.into(),
        host: "127.0.0.1".into(),
        port: 9,
        heartbeat_freq: Duration::from_secs(3600),
        timeout: Duration::from_secs(3600),
        max_missed: 3,
        registered_at_micros: 1,
        last_epoch: None,
        kind: Default::default(),
        rise: 1,
    }
}

#[tokio::test]
async fn a_shortened_id_is_invalid_argument_and_a_uuid_has_one_spelling() {
    let node = memory_node().await;
    let url = format!("http://{}", node.local_addr().unwrap());
    let mut raw = HeartbeatServiceClient::connect(url).await.unwrap();

    let refused = raw.register_peer(idle_peer("9a0e...")).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("whole identity"),
        "{}",
        refused.message()
    );
    let details = refused.get_error_details();
    assert_eq!(
        details.bad_request().unwrap().field_violations[0].field,
        "peer_id"
    );

    let first = raw
        .register_peer(idle_peer(UPPER))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.peer_id, UUID);
    assert!(!first.updated);
    let second = raw
        .register_peer(idle_peer(UUID))
        .await
        .unwrap()
        .into_inner();
    assert!(second.updated, "the same peer");
    let ids: Vec<String> = node.peers().await.into_iter().map(|p| p.peer_id).collect();
    assert_eq!(ids, [UUID]);
    raw.deregister_peer(DeregisterPeerRequest {
        peer_id: format!("{{{UPPER}}}"),
    })
    .await
    .expect("any spelling deregisters it");
    assert!(node.peers().await.is_empty());
    node.stop().await.unwrap();
}

#[tokio::test]
async fn the_status_says_whom_a_peer_answers_as_until_it_is_registered_right() {
    let monitor = memory_node().await;
    let peer = memory_node().await;
    let mut wrong = registration(&peer, 50);
    wrong.peer_id = "db-2".into();
    monitor.register_peer(wrong).await.unwrap();
    let seen = eventually_async("answers_as", || async {
        status(&monitor, "db-2").await.and_then(|s| s.answers_as)
    })
    .await;
    assert_eq!(seen, peer.identity());

    monitor
        .register_peer(registration(&peer, 50))
        .await
        .unwrap();
    let right = wait_state(&monitor, &peer.identity(), PeerState::Alive).await;
    assert_eq!(right.answers_as, None);
    monitor.stop().await.unwrap();
    peer.stop().await.unwrap();
}

#[tokio::test]
async fn registrations_stored_under_ids_no_node_has_are_quarantined_and_removable() {
    let store = Arc::new(MemoryStore::new());
    for id in ["peer-a", "9a0e...", UPPER] {
        store.put_peer(&record(id)).unwrap();
    }
    let node = HeartbeatServer::builder()
        .server_port(0)
        .store(store.clone())
        .build()
        .unwrap();
    node.start().await.unwrap();
    let monitored: Vec<String> = node.peers().await.into_iter().map(|p| p.peer_id).collect();
    assert_eq!(monitored, ["peer-a"]);
    let quarantined = node.quarantined_peers();
    let ids: Vec<&str> = quarantined.iter().map(|q| q.peer_id.as_str()).collect();
    assert_eq!(ids, [UPPER, "9a0e..."]);
    assert!(
        quarantined[0]
            .reason
            .contains(&format!("register \"{UUID}\"")),
        "{quarantined:?}"
    );
    assert!(
        quarantined[1].reason.contains("whole identity"),
        "{quarantined:?}"
    );

    for id in ["9a0e...", UPPER] {
        node.deregister_peer(DeregisterPeerRequest { peer_id: id.into() })
            .await
            .unwrap_or_else(|e| panic!("deregister {id}: {e}"));
    }
    assert!(node.quarantined_peers().is_empty());
    let stored: Vec<String> = store
        .load_peers()
        .unwrap()
        .records
        .into_iter()
        .map(|r| r.peer_id)
        .collect();
    assert_eq!(stored, ["peer-a"]);
    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_named_node_answers_as_its_name_and_keeps_it() {
    let store = Arc::new(MemoryStore::new());
    let named = HeartbeatServer::builder()
        .server_port(0)
        .store(store.clone())
        .node_id("db-2")
        .build()
        .unwrap();
    named.start().await.unwrap();
    assert_eq!(named.identity(), "db-2");
    let instance = named.instance_id();

    let monitor = memory_node().await;
    let mut by_name = registration(&named, 50);
    by_name.peer_id = "db-2".into();
    monitor.register_peer(by_name).await.unwrap();
    wait_state(&monitor, "db-2", PeerState::Alive).await;
    named.stop().await.unwrap();
    drop(named);

    let again = HeartbeatServer::builder()
        .server_port(0)
        .store(store.clone())
        .build()
        .unwrap();
    assert_eq!(again.identity(), "db-2", "kept without the option");
    assert_eq!(again.instance_id(), instance, "a stable topic instance id");
    drop(again);

    let renamed = HeartbeatServer::builder()
        .server_port(0)
        .store(store.clone())
        .node_id("db-3")
        .build()
        .unwrap_err();
    assert!(
        matches!(&renamed, ServerError::IdentityChanged { stored, requested }
            if stored == "db-2" && requested == "db-3"),
        "{renamed:?}"
    );
    let bad = HeartbeatServer::builder()
        .in_memory()
        .node_id("db 2")
        .build()
        .unwrap_err();
    assert!(
        matches!(
            bad,
            ServerError::InvalidConfig {
                field: "node_id",
                ..
            }
        ),
        "{bad:?}"
    );
    monitor.stop().await.unwrap();
}
