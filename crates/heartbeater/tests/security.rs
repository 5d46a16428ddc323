//! The gRPC trust boundary: TLS, mutual TLS, bearer tokens and the limits
//! on what a client can make a node hold.

mod common;

use std::time::Duration;

use common::certs::{Ca, Leaf};
use common::{registration, wait_state};
use heartbeater::{
    AuthTokens, ClientError, DeregisterPeerRequest, HeartbeatClient, HeartbeatMessage,
    HeartbeatServer, HeartbeatServerBuilder, PeerState, RegisterPeerRequest, TlsClientConfig,
    TlsServerConfig, Unreachable,
};

const DEADLINE: Duration = Duration::from_secs(5);

fn server_tls(leaf: &Leaf, client_ca: Option<&Ca>) -> TlsServerConfig {
    TlsServerConfig::from_pem(
        leaf.cert.as_bytes(),
        leaf.key.as_bytes(),
        client_ca.map(|ca| ca.pem.as_bytes()),
    )
    .expect("server TLS")
}

fn client_tls(ca: &Ca, identity: Option<&Leaf>) -> TlsClientConfig {
    let tls = TlsClientConfig::from_pem(ca.pem.as_bytes()).expect("client TLS");
    match identity {
        Some(leaf) => tls
            .with_identity_pem(leaf.cert.as_bytes(), leaf.key.as_bytes())
            .expect("client identity"),
        None => tls,
    }
}

async fn start(builder: HeartbeatServerBuilder) -> HeartbeatServer {
    let server = builder.server_port(0).in_memory().build().expect("build");
    server.start().await.expect("start");
    server
}

fn port(server: &HeartbeatServer) -> u16 {
    server.local_addr().expect("running").port()
}

fn hello() -> HeartbeatMessage {
    HeartbeatMessage {
        client_id: "test".into(),
        client_epoch: 0,
    }
}

fn some_peer(id: &str) -> RegisterPeerRequest {
    common::idle_peer(id)
}

#[tokio::test]
async fn a_tls_node_refuses_plaintext_clients_and_answers_clients_that_trust_its_ca() {
    let ca = Ca::new("cluster CA");
    let node = start(HeartbeatServer::builder().tls(server_tls(&ca.leaf("node"), None))).await;

    let plain = HeartbeatClient::new("127.0.0.1", port(&node), DEADLINE).unwrap();
    let refused = plain.heartbeat(hello()).await.unwrap_err();
    assert!(refused.is_retryable(), "{refused:?}");

    let trusting = HeartbeatClient::builder("127.0.0.1", port(&node))
        .tls(client_tls(&ca, None))
        .build()
        .unwrap();
    let answer = trusting.heartbeat(hello()).await.expect("TLS heartbeat");
    assert_eq!(answer.server_id, node.identity());
    assert!(node.security_stats().tls_handshakes_failed >= 1);
}

#[tokio::test]
async fn a_client_that_trusts_another_ca_is_refused() {
    let (ca, other) = (Ca::new("cluster CA"), Ca::new("someone else"));
    let node = start(HeartbeatServer::builder().tls(server_tls(&ca.leaf("node"), None))).await;
    let wrong = HeartbeatClient::builder("127.0.0.1", port(&node))
        .tls(client_tls(&other, None))
        .build()
        .unwrap();
    let refused = wrong.heartbeat(hello()).await.unwrap_err();
    assert!(
        matches!(
            refused,
            ClientError::Unavailable {
                reason: Unreachable::UntrustedCertificate,
                ..
            }
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_of_its_ca() {
    let (ca, other) = (Ca::new("cluster CA"), Ca::new("someone else"));
    let node = start(HeartbeatServer::builder().tls(server_tls(&ca.leaf("node"), Some(&ca)))).await;
    let client = |identity: Option<&Leaf>| {
        HeartbeatClient::builder("127.0.0.1", port(&node))
            .tls(client_tls(&ca, identity))
            .build()
            .unwrap()
    };
    // Whether the node's alert or its closing of the connection reaches the
    // client first varies from run to run; the reason must not.
    for _ in 0..5 {
        let anonymous = client(None).heartbeat(hello()).await.unwrap_err();
        assert!(anonymous.is_retryable(), "{anonymous:?}");
        assert!(
            matches!(
                anonymous,
                ClientError::Unavailable {
                    reason: Unreachable::ClientCertificateRequired,
                    ..
                }
            ),
            "{anonymous:?}"
        );
        let foreign = client(Some(&other.leaf("intruder")))
            .heartbeat(hello())
            .await
            .unwrap_err();
        assert!(foreign.is_retryable(), "{foreign:?}");
        assert!(
            matches!(
                foreign,
                ClientError::Unavailable {
                    reason: Unreachable::ClientCertificateRejected,
                    ..
                }
            ),
            "{foreign:?}"
        );
    }
    client(Some(&ca.leaf("operator")))
        .heartbeat(hello())
        .await
        .expect("a client with a certificate of the CA is served");
}

/// Two nodes with mutual TLS and no UDP: every heartbeat is a gRPC call
/// over TLS, each node presenting its certificate to the other.
#[tokio::test]
async fn two_mutual_tls_nodes_heartbeat_each_other_over_grpc() {
    let ca = Ca::new("cluster CA");
    let node = |name: &str| {
        let leaf = ca.leaf(name);
        HeartbeatServer::builder()
            .udp_heartbeats(false)
            .tls(server_tls(&leaf, Some(&ca)))
            .peer_tls(client_tls(&ca, Some(&leaf)))
    };
    let a = start(node("a")).await;
    let b = start(node("b")).await;
    a.register_peer(registration(&b, 50)).await.unwrap();
    let status = wait_state(&a, &b.identity(), PeerState::Alive).await;
    assert_eq!(status.epoch, Some(b.epoch()));

    // The control: a monitor without the peer's CA cannot heartbeat it.
    let blind = start(HeartbeatServer::builder().udp_heartbeats(false)).await;
    let mut request = registration(&b, 50);
    request.max_missed = Some(1);
    blind.register_peer(request).await.unwrap();
    wait_state(&blind, &b.identity(), PeerState::Unreachable).await;
}

#[tokio::test]
async fn changes_need_an_accepted_token_and_a_refused_call_changes_nothing() {
    let tokens = AuthTokens::parse("current-token\nprevious-token\n").unwrap();
    let node = start(HeartbeatServer::builder().auth_tokens(tokens)).await;
    let with = |token: Option<&str>| {
        let b = HeartbeatClient::builder("127.0.0.1", port(&node));
        match token {
            Some(t) => b.token(t),
            None => b,
        }
        .build()
        .unwrap()
    };
    for token in [None, Some("wrong-token"), Some("current-token-but-longer")] {
        let e = with(token).register_peer(some_peer("p")).await.unwrap_err();
        assert!(
            matches!(e, ClientError::Unauthenticated(_)),
            "{token:?}: {e:?}"
        );
    }
    assert!(
        node.peers().await.is_empty(),
        "a refused call changed the registry"
    );
    assert_eq!(node.security_stats().unauthenticated_calls, 3);

    with(Some("previous-token"))
        .register_peer(some_peer("p"))
        .await
        .expect("an older token of the file is accepted");
    let e = with(None)
        .deregister_peer(DeregisterPeerRequest {
            peer_id: "p".into(),
        })
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Unauthenticated(_)), "{e:?}");
    assert_eq!(node.peers().await.len(), 1);

    // Reads stay open.
    let anyone = with(None);
    anyone.heartbeat(hello()).await.expect("heartbeat is open");
    assert_eq!(anyone.list_peers().await.unwrap().peers.len(), 1);

    // Rotation: the old token stops working at the next call.
    node.set_auth_tokens(Some(AuthTokens::new(["next-token"]).unwrap()));
    let e = with(Some("current-token"))
        .register_peer(some_peer("q"))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Unauthenticated(_)), "{e:?}");
    with(Some("next-token"))
        .register_peer(some_peer("q"))
        .await
        .unwrap();
}

#[tokio::test]
async fn with_auth_reads_every_call_needs_the_token_health_included() {
    let node = start(
        HeartbeatServer::builder()
            .auth_tokens(AuthTokens::new(["t0ken"]).unwrap())
            .auth_reads(true),
    )
    .await;
    let anyone = HeartbeatClient::new("127.0.0.1", port(&node), DEADLINE).unwrap();
    for e in [
        anyone.heartbeat(hello()).await.unwrap_err(),
        anyone.list_peers().await.unwrap_err(),
        anyone.watch_peers(false).await.map(|_| ()).unwrap_err(),
    ] {
        assert!(matches!(e, ClientError::Unauthenticated(_)), "{e:?}");
    }
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", port(&node)))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let e = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    let holder = HeartbeatClient::builder("127.0.0.1", port(&node))
        .token("t0ken")
        .build()
        .unwrap();
    holder
        .heartbeat(hello())
        .await
        .expect("the token opens reads");

    // A node heartbeating this one over gRPC sends its own first token.
    let monitor = start(
        HeartbeatServer::builder()
            .udp_heartbeats(false)
            .auth_tokens(AuthTokens::new(["t0ken"]).unwrap()),
    )
    .await;
    monitor
        .register_peer(registration(&node, 50))
        .await
        .unwrap();
    wait_state(&monitor, &node.identity(), PeerState::Alive).await;
}

#[tokio::test]
async fn an_oversized_request_is_resource_exhausted_and_the_node_keeps_serving() {
    let node = start(HeartbeatServer::builder().max_request_bytes(1024)).await;
    let client = HeartbeatClient::new("127.0.0.1", port(&node), DEADLINE).unwrap();
    let mut big = some_peer("p");
    big.peer_host = "h".repeat(2000);
    let e = client.register_peer(big).await.unwrap_err();
    assert!(matches!(e, ClientError::ResourceExhausted(_)), "{e:?}");
    client
        .heartbeat(hello())
        .await
        .expect("the node still serves, on the same connection");
    client.register_peer(some_peer("p")).await.unwrap();
}

#[tokio::test]
async fn connections_past_an_address_share_are_closed() {
    let node = start(HeartbeatServer::builder().max_connections_per_address(2)).await;
    // Each client has a connection of its own.
    let clients: Vec<HeartbeatClient> = (0..3)
        .map(|_| HeartbeatClient::new("127.0.0.1", port(&node), DEADLINE).unwrap())
        .collect();
    clients[0].heartbeat(hello()).await.unwrap();
    clients[1].heartbeat(hello()).await.unwrap();
    let e = clients[2].heartbeat(hello()).await.unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    assert!(node.security_stats().connections_over_limit >= 1);
    // A closed connection gives its share back.
    drop(clients);
    common::eventually_async("a free connection slot", || async {
        let c = HeartbeatClient::new("127.0.0.1", port(&node), DEADLINE).unwrap();
        c.heartbeat(hello()).await.ok()
    })
    .await;
}

/// Many clients each within their share can still exhaust descriptors: the
/// node holds all of them together to its own bound.
#[tokio::test]
async fn connections_past_the_nodes_total_are_closed() {
    let node = start(
        HeartbeatServer::builder()
            .max_connections(2)
            .max_connections_per_address(100),
    )
    .await;
    let clients: Vec<HeartbeatClient> = (0..3)
        .map(|_| HeartbeatClient::new("127.0.0.1", port(&node), DEADLINE).unwrap())
        .collect();
    clients[0].heartbeat(hello()).await.unwrap();
    clients[1].heartbeat(hello()).await.unwrap();
    let e = clients[2].heartbeat(hello()).await.unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    let stats = node.security_stats();
    assert!(stats.connections_over_total >= 1, "{stats:?}");
    assert_eq!(stats.connections_over_limit, 0, "{stats:?}");
    drop(clients);
    common::eventually_async("a free connection slot", || async {
        let c = HeartbeatClient::new("127.0.0.1", port(&node), DEADLINE).unwrap();
        c.heartbeat(hello()).await.ok()
    })
    .await;
}

#[tokio::test]
async fn watchers_past_the_limit_are_refused() {
    let node = start(HeartbeatServer::builder().max_watchers(2)).await;
    let client = HeartbeatClient::new("127.0.0.1", port(&node), DEADLINE).unwrap();
    let first = client.watch_peers(false).await.unwrap();
    let _second = client.watch_peers(false).await.unwrap();
    let e = client.watch_peers(false).await.map(|_| ()).unwrap_err();
    assert!(matches!(e, ClientError::ResourceExhausted(_)), "{e:?}");
    drop(first);
    common::eventually_async("a watcher slot given back", || async {
        client.watch_peers(false).await.ok().map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_connections() {
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let node = start(HeartbeatServer::builder().tls(server_tls(&old_ca.leaf("node"), None))).await;
    let trusting = |ca: &Ca| {
        HeartbeatClient::builder("127.0.0.1", port(&node))
            .tls(client_tls(ca, None))
            .build()
            .unwrap()
    };
    trusting(&old_ca).heartbeat(hello()).await.unwrap();
    node.set_tls(server_tls(&new_ca.leaf("node"), None));
    trusting(&new_ca)
        .heartbeat(hello())
        .await
        .expect("new connections get the new certificate");
    assert!(trusting(&old_ca).heartbeat(hello()).await.is_err());
}

#[test]
fn bad_tls_material_is_a_typed_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("CA");
    let (leaf, other) = (ca.leaf("a"), ca.leaf("b"));
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let cert = write("cert.pem", &leaf.cert);
    let key = write("key.pem", &leaf.key);
    let other_key = write("other.pem", &other.key);
    let garbage = write("garbage.pem", "not a certificate\n");
    TlsServerConfig::from_files(&cert, &key, None).expect("good files load");

    let e = TlsServerConfig::from_files(&cert, &other_key, None).unwrap_err();
    assert!(e.to_string().contains("cert.pem"), "{e}");
    let e = TlsServerConfig::from_files(&garbage, &key, None).unwrap_err();
    assert!(
        e.to_string().contains("garbage.pem") && e.to_string().contains("no certificate"),
        "{e}"
    );
    let e = TlsServerConfig::from_files(&cert, &garbage, None).unwrap_err();
    assert!(e.to_string().contains("no private key"), "{e}");
    let e = TlsServerConfig::from_files(dir.path().join("missing.pem"), &key, None).unwrap_err();
    assert!(e.to_string().contains("missing.pem"), "{e}");
    let e = TlsClientConfig::from_file(&garbage).unwrap_err();
    assert!(e.to_string().contains("garbage.pem"), "{e}");
}

/// A topic stream over mutual TLS, with a token: the subscription made
/// with the node's peer TLS and token receives; one without either does not.
#[tokio::test]
async fn topic_subscriptions_go_over_mutual_tls_with_the_nodes_token() {
    use std::sync::{Arc, Mutex};
    let ca = Ca::new("cluster CA");
    let publisher_node = start(
        HeartbeatServer::builder()
            .tls(server_tls(&ca.leaf("publisher"), Some(&ca)))
            .auth_tokens(AuthTokens::new(["topic-token"]).unwrap())
            .auth_reads(true),
    )
    .await;
    let publisher = publisher_node.create_publisher("news").unwrap();
    let addr = publisher_node.local_addr().unwrap();
    let leaf = ca.leaf("reader");
    let reader = start(
        HeartbeatServer::builder()
            .peer_tls(client_tls(&ca, Some(&leaf)))
            .peer_token("topic-token"),
    )
    .await;
    let outsider = start(HeartbeatServer::builder()).await;
    let got = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let outsider_got = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let sink = |into: Arc<Mutex<Vec<Vec<u8>>>>| {
        move |_: &str, payload: &[u8]| into.lock().unwrap().push(payload.to_vec())
    };
    let _reading = reader.subscribe("news", addr, sink(got.clone())).unwrap();
    let _outside = outsider
        .subscribe("news", addr, sink(outsider_got.clone()))
        .unwrap();
    common::eventually("the TLS subscriber on the publisher", || {
        publisher
            .subscribers()
            .contains(&reader.instance_id())
            .then_some(())
    })
    .await;
    publisher.send(b"hello".to_vec()).await;
    common::eventually("the message", || {
        (!got.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    assert_eq!(publisher.subscribers(), vec![reader.instance_id()]);
    assert!(outsider_got.lock().unwrap().is_empty());
}

/// A watcher that stops reading never silently misses events: once it has
/// fallen past the node's buffer, its stream ends with RESOURCE_EXHAUSTED.
#[tokio::test]
async fn a_watcher_that_falls_behind_is_told_so() {
    use futures_util::StreamExt;
    const REGISTRATIONS: usize = 50_000;
    let node = start(HeartbeatServer::builder()).await;
    let client = HeartbeatClient::new("127.0.0.1", port(&node), DEADLINE).unwrap();
    let mut events = Box::pin(client.watch_peers(false).await.unwrap());
    // Enough events, of the longest ids, to fill the stream's flow control
    // window and then the node's buffer.
    for chunk in (0..REGISTRATIONS).collect::<Vec<usize>>().chunks(1000) {
        let registrations = chunk
            .iter()
            .map(|i| node.register_peer(some_peer(&format!("{i:0>64}"))));
        for r in futures_util::future::join_all(registrations).await {
            r.unwrap();
        }
    }
    let mut delivered = 0;
    let ended = loop {
        match tokio::time::timeout(common::PATIENCE, events.next()).await {
            Ok(Some(Ok(_))) => delivered += 1,
            Ok(Some(Err(e))) => break e,
            Ok(None) => panic!("the stream ended without saying it lagged"),
            Err(_) => panic!("no lag signal after {delivered} events"),
        }
    };
    assert!(
        matches!(&ended, ClientError::ResourceExhausted(m) if m.contains("behind")),
        "{ended:?}"
    );
    assert!(delivered < REGISTRATIONS, "{delivered}");
}

/// A client that claims a live subscriber's instance id (ids are public in
/// `/api/topics`) with a certificate of its own is refused while the
/// subscriber's stream is open, and for a while after, so it cannot answer
/// heartbeats in its name: once the subscriber is gone, it is reported
/// disconnected, and not connected again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_subscriber_cannot_keep_a_dead_one_connected() {
    use heartbeater::{ClientConnectionListener, HeartbeatParameters, SubscriptionState};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Heard(Arc<Mutex<Vec<(&'static str, heartbeater::Uuid)>>>);
    impl ClientConnectionListener for Heard {
        fn on_client_connected(&self, _: &str, client: heartbeater::Uuid) {
            self.0.lock().unwrap().push(("connected", client));
        }
        fn on_client_disconnected(&self, _: &str, client: heartbeater::Uuid) {
            self.0.lock().unwrap().push(("disconnected", client));
        }
    }

    let ca = Ca::new("cluster CA");
    let publisher_node =
        start(HeartbeatServer::builder().tls(server_tls(&ca.leaf("publisher"), Some(&ca)))).await;
    let addr = publisher_node.local_addr().unwrap();
    let publisher = publisher_node.create_publisher("news").unwrap();
    let heard = Heard::default();
    let params = HeartbeatParameters::builder()
        .heartbeat_rate(Duration::from_millis(50))
        .heartbeat_timeout(Duration::from_millis(50))
        .max_client_conn_checks(3)
        .build()
        .unwrap();
    publisher
        .activate_heartbeats(heard.clone(), params)
        .unwrap();

    let subscriber_node =
        start(HeartbeatServer::builder().peer_tls(client_tls(&ca, Some(&ca.leaf("subscriber")))))
            .await;
    let victim = subscriber_node.instance_id();
    let subscription = subscriber_node
        .subscribe("news", addr, |_: &str, _: &[u8]| {})
        .unwrap();
    common::eventually("the subscriber connected", || {
        heard
            .0
            .lock()
            .unwrap()
            .contains(&("connected", victim))
            .then_some(())
    })
    .await;

    // Same instance id (its node named after the victim), another certificate.
    let impostor_node = start(
        HeartbeatServer::builder()
            .node_id(subscriber_node.identity())
            .peer_tls(client_tls(&ca, Some(&ca.leaf("impostor")))),
    )
    .await;
    assert_eq!(impostor_node.instance_id(), victim);
    let impostor = impostor_node
        .subscribe("news", addr, |_: &str, _: &[u8]| {})
        .unwrap();
    let refused = common::eventually("the impostor refused", || match impostor.state() {
        SubscriptionState::Retrying { reason } => Some(reason),
        _ => None,
    })
    .await;
    assert!(refused.contains("another client"), "{refused}");
    assert_eq!(
        publisher.subscribers(),
        vec![victim],
        "one stream, the victim's"
    );

    // The subscriber goes away: reported disconnected, whatever the
    // impostor does next.
    drop(subscription);
    subscriber_node.stop().await.unwrap();
    common::eventually("the victim reported disconnected", || {
        heard
            .0
            .lock()
            .unwrap()
            .contains(&("disconnected", victim))
            .then_some(())
    })
    .await;
    // Nor can it take the id over once the victim is gone: the id stays
    // its holder's for a while (the impostor keeps retrying meanwhile).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        *heard.0.lock().unwrap(),
        vec![("connected", victim), ("disconnected", victim)],
        "the dead subscriber is not reported connected again"
    );
    assert!(
        matches!(impostor.state(), SubscriptionState::Retrying { .. }),
        "{:?}",
        impostor.state()
    );
    drop(impostor);
}
