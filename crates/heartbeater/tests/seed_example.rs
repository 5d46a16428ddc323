//! The seed's usage example (two servers heartbeating each other through
//! their clients), ported to the blocking API, with the assertions the
//! original lacked.

use std::thread::sleep;
use std::time::{Duration, Instant};

use heartbeater::blocking::{HeartbeatClient, HeartbeatServer};
use heartbeater::{DeregisterPeerRequest, PeerState, RegisterPeerRequest};

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        sleep(Duration::from_millis(5));
    }
}

#[test]
fn two_servers_heartbeat_each_other_until_deregistered() {
    // 1. set up and start server one (the seed uses fixed ports 8181/8484;
    //    port 0 lets tests run in parallel).
    let server_one = HeartbeatServer::builder()
        .server_host("127.0.0.1")
        .server_port(0)
        .worker_count(1)
        .server_epoch(2)
        .in_memory()
        .build()
        .expect("build server one");
    let one_addr = server_one.start().expect("start server one");
    assert!(server_one.is_running());

    // 2. client one, of server one.
    let deadline = Duration::from_millis(500);
    let mut client_one =
        HeartbeatClient::new("127.0.0.1", one_addr.port(), deadline, 1).expect("client one");
    client_one.start().expect("start client one");
    assert!(client_one.is_running());

    // 3. server two, epoch 3.
    let server_two = HeartbeatServer::builder()
        .server_host("127.0.0.1")
        .server_port(0)
        .worker_count(1)
        .server_epoch(3)
        .in_memory()
        .build()
        .expect("build server two");
    let two_addr = server_two.start().expect("start server two");
    assert!(server_two.is_running());

    // 4. client two, of server two.
    let mut client_two =
        HeartbeatClient::new("127.0.0.1", two_addr.port(), deadline, 1).expect("client two");
    client_two.start().expect("start client two");
    assert!(client_two.is_running());

    // The seed's own period: its example must run on a node's defaults,
    // registered over the network as it is here.
    let heartbeat_freq_millis = 5;

    // 5. register server two on server one: one heartbeats two.
    let response = client_one
        .register_peer(RegisterPeerRequest {
            peer_id: server_two.identity(),
            peer_host: "127.0.0.1".into(),
            peer_port: u32::from(two_addr.port()),
            heartbeat_freq_millis,
            ..Default::default()
        })
        .expect("register two on one");
    assert_eq!(response.server_id, server_one.identity());
    assert_eq!(response.server_epoch, 2);
    assert!(!response.updated);

    // 6. register server one on server two.
    client_two
        .register_peer(RegisterPeerRequest {
            peer_id: server_one.identity(),
            peer_host: "127.0.0.1".into(),
            peer_port: u32::from(one_addr.port()),
            heartbeat_freq_millis,
            ..Default::default()
        })
        .expect("register one on two");

    // 7. a few heartbeats go through: each sees the other alive, with its epoch.
    wait_until("each server to see the other alive after 20 acks", || {
        let one_sees = server_one.peers();
        let two_sees = server_two.peers();
        one_sees.len() == 1
            && two_sees.len() == 1
            && one_sees[0].state == PeerState::Alive
            && two_sees[0].state == PeerState::Alive
            && one_sees[0].heartbeats_acked >= 20
            && two_sees[0].heartbeats_acked >= 20
    });
    let one_sees = &server_one.peers()[0];
    let two_sees = &server_two.peers()[0];
    let counts = server_one.peer_counts();
    assert_eq!((counts.alive, counts.total()), (1, 1), "{counts:?}");
    assert_eq!(one_sees.peer_id, server_two.identity());
    assert_eq!(
        one_sees.epoch,
        Some(3),
        "server one learned server two's epoch"
    );
    assert_eq!(
        two_sees.epoch,
        Some(2),
        "server two learned server one's epoch"
    );
    assert!(one_sees.last_rtt.is_some());
    assert!(one_sees.heartbeats_sent >= one_sees.heartbeats_acked);

    // 8. deregister two from one; 9. one from two.
    client_one
        .deregister_peer(DeregisterPeerRequest {
            peer_id: server_two.identity(),
        })
        .expect("deregister two");
    client_two
        .deregister_peer(DeregisterPeerRequest {
            peer_id: server_one.identity(),
        })
        .expect("deregister one");
    assert!(server_one.peers().is_empty());
    assert!(server_two.peers().is_empty());

    // Heartbeating stopped: once the last heartbeats in flight have landed,
    // neither server answers any more (20 periods of silence).
    sleep(Duration::from_millis(50));
    let answered = (
        server_one.heartbeats_answered(),
        server_two.heartbeats_answered(),
    );
    assert!(answered.0 >= 20 && answered.1 >= 20, "{answered:?}");
    sleep(Duration::from_millis(20 * heartbeat_freq_millis as u64));
    assert_eq!(
        (
            server_one.heartbeats_answered(),
            server_two.heartbeats_answered()
        ),
        answered,
        "no heartbeat after deregistration"
    );

    // The node still answers heartbeats from clients.
    let direct = client_one
        .heartbeat(heartbeater::HeartbeatMessage {
            client_id: "test".into(),
            client_epoch: 0,
        })
        .expect("direct heartbeat");
    assert_eq!(direct.server_id, server_one.identity());
    assert_eq!(direct.server_epoch, 2);

    // n. shut everything down.
    client_one.stop().expect("stop client one");
    assert!(!client_one.is_running());
    server_one.stop().expect("stop server one");
    assert!(!server_one.is_running());
    client_two.stop().expect("stop client two");
    assert!(!client_two.is_running());
    server_two.stop().expect("stop server two");
    assert!(!server_two.is_running());
}
