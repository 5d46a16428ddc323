//! Heartbeats between nodes travel as datagrams on the node's port number,
//! with gRPC taking over per peer where datagrams go unanswered.

mod common;

use std::time::{Duration, Instant};

use common::*;
use heartbeater::udp::{answer, Datagram, Kind};
use heartbeater::{HeartbeatServer, PeerEventKind, PeerState, RegisterPeerRequest, ServerError};
use tokio::net::UdpSocket;

/// Scheduling slack on a loaded 2-core CI machine (see detection.rs).
const SLACK: Duration = Duration::from_millis(500);

/// A ping padded for the pong of a node (whose identity is a 36-byte UUID).
fn ping(token: [u8; 32]) -> Vec<u8> {
    let mut buf = Vec::new();
    Datagram {
        kind: Kind::Ping,
        token,
        epoch: 1,
        identity: "tester",
    }
    .seal(Datagram::pong_len(36, false), None, &mut buf);
    buf
}

async fn recv_within(socket: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    match tokio::time::timeout(wait, socket.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answers_a_ping_with_its_identity_epoch_and_the_token() {
    let node = memory_node().await;
    let addr = node.local_addr().unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(addr).await.unwrap();
    let before = node.heartbeats_answered();

    socket.send(&ping([42; 32])).await.unwrap();
    let reply = recv_within(&socket, PATIENCE).await.expect("a pong");
    let pong = Datagram::open(&reply, None).unwrap();
    assert_eq!(pong.kind, Kind::Pong);
    assert_eq!(pong.token, [42; 32]);
    assert_eq!(pong.identity, node.identity());
    assert_eq!(pong.epoch, node.epoch());
    assert_eq!(node.heartbeats_answered(), before + 1);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_datagrams_get_no_answer_and_do_not_disturb_the_node() {
    let node = memory_node().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(node.local_addr().unwrap()).await.unwrap();

    let mut pong = Vec::new();
    answer(&ping([1; 32]), "someone", 1, None, &mut pong).unwrap();
    for stray in [&b""[..], b"hello", &[0xff; 600], &pong] {
        socket.send(stray).await.unwrap();
    }
    assert_eq!(recv_within(&socket, Duration::from_millis(300)).await, None);
    assert_eq!(node.heartbeats_answered(), 0);

    socket.send(&ping([2; 32])).await.unwrap();
    let reply = recv_within(&socket, PATIENCE)
        .await
        .expect("still answering");
    assert_eq!(Datagram::open(&reply, None).unwrap().token, [2; 32]);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_only_speaks_udp_is_alive_and_its_silence_detected() {
    let monitor = memory_node().await;
    let fake = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = fake.local_addr().unwrap().port();
    let responder = tokio::spawn(async move {
        let (mut buf, mut out) = (vec![0u8; 1024], Vec::new());
        loop {
            let (n, from) = fake.recv_from(&mut buf).await.unwrap();
            if answer(&buf[..n], "udp-only", 5, None, &mut out).is_ok() {
                fake.send_to(&out, from).await.unwrap();
            }
        }
    });
    let mut events = monitor.events();
    monitor
        .register_peer(RegisterPeerRequest {
            peer_id: "udp-only".into(),
            peer_host: "127.0.0.1".into(),
            peer_port: u32::from(port),
            heartbeat_freq_millis: 50,
            timeout_millis: Some(40),
            max_missed: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    let up = next_event(&mut events, "udp-only", |k| *k == PeerEventKind::PeerUp).await;
    assert_eq!(up.epoch, Some(5));
    tokio::time::sleep(Duration::from_millis(120)).await;

    responder.abort();
    let silenced = Instant::now();
    next_event(&mut events, "udp-only", |k| *k == PeerEventKind::PeerDown).await;
    let took = silenced.elapsed();
    let bound = Duration::from_millis(3 * 50 + 40);
    assert!(
        took <= bound + SLACK,
        "detected after {took:?}, bound {bound:?}"
    );
    monitor.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pongs_that_do_not_echo_the_monitors_token_are_ignored() {
    let monitor = memory_node().await;
    let fake = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = fake.local_addr().unwrap().port();
    let forger = tokio::spawn(async move {
        let (mut buf, mut out) = (vec![0u8; 1024], Vec::new());
        loop {
            let (n, from) = fake.recv_from(&mut buf).await.unwrap();
            // A forger that guesses everything but the monitor's secret.
            buf[8 + 24] ^= 0xff;
            if answer(&buf[..n], "forged", 1, None, &mut out).is_ok() {
                fake.send_to(&out, from).await.unwrap();
            }
        }
    });
    let mut events = monitor.events();
    monitor
        .register_peer(RegisterPeerRequest {
            peer_id: "forged".into(),
            peer_host: "127.0.0.1".into(),
            peer_port: u32::from(port),
            heartbeat_freq_millis: 20,
            timeout_millis: None,
            max_missed: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    let down = next_event(&mut events, "forged", |k| *k == PeerEventKind::PeerDown).await;
    assert_eq!(down.state, PeerState::Unreachable);
    let s = status(&monitor, "forged").await.unwrap();
    assert_eq!(s.heartbeats_acked, 0);
    assert!(s.heartbeats_sent >= 3);
    forger.abort();
    monitor.stop().await.unwrap();
}

async fn grpc_only_node() -> HeartbeatServer {
    let server = HeartbeatServer::builder()
        .server_port(0)
        .in_memory()
        .udp_heartbeats(false)
        .build()
        .unwrap();
    server.start().await.unwrap();
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_udp_is_monitored_over_grpc_within_the_same_bound() {
    let monitor = memory_node().await;
    let peer = grpc_only_node().await;
    let peer_id = peer.identity();
    let mut events = monitor.events();
    let mut request = registration(&peer, 50);
    request.timeout_millis = Some(40);
    request.max_missed = Some(3);
    monitor.register_peer(request).await.unwrap();
    next_event(&mut events, &peer_id, |k| *k == PeerEventKind::PeerUp).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = status(&monitor, &peer_id).await.unwrap();
    assert_eq!((s.state, s.missed), (PeerState::Alive, 0), "{s:?}");

    peer.stop().await.unwrap();
    let stopped = Instant::now();
    next_event(&mut events, &peer_id, |k| *k == PeerEventKind::PeerDown).await;
    let took = stopped.elapsed();
    let bound = Duration::from_millis(3 * 50 + 40);
    assert!(
        took <= bound + SLACK,
        "detected after {took:?}, bound {bound:?}"
    );
    monitor.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_without_udp_heartbeats_over_grpc() {
    let monitor = grpc_only_node().await;
    let peer = memory_node().await;
    let peer_id = peer.identity();
    let mut events = monitor.events();
    monitor
        .register_peer(registration(&peer, 20))
        .await
        .unwrap();
    next_event(&mut events, &peer_id, |k| *k == PeerEventKind::PeerUp).await;
    peer.stop().await.unwrap();
    monitor.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_taken_for_udp_is_a_typed_error_unless_udp_is_off() {
    // A UDP port whose TCP twin is free (the other tests' connections take
    // ephemeral TCP ports from the same range).
    let (_squatter, port) = loop {
        let squatter = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = squatter.local_addr().unwrap();
        if std::net::TcpListener::bind(addr).is_ok() {
            break (squatter, addr.port());
        }
    };
    let node = HeartbeatServer::builder()
        .server_port(port)
        .in_memory()
        .build()
        .unwrap();
    match node.start().await {
        Err(ServerError::UdpBind { addr, .. }) => assert_eq!(addr.port(), port),
        other => panic!("expected UdpBind, got {other:?}"),
    }
    let node = HeartbeatServer::builder()
        .server_port(port)
        .in_memory()
        .udp_heartbeats(false)
        .build()
        .unwrap();
    assert_eq!(node.start().await.unwrap().port(), port);
    node.stop().await.unwrap();
}
