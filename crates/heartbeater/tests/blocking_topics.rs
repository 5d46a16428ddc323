//! Topics from a program without an async runtime: the blocking facade
//! publishes, heartbeats and subscribes on the server's own runtime.

use std::sync::mpsc;
use std::time::Duration;

use heartbeater::blocking::HeartbeatServer;
use heartbeater::{ClientConnectionListener, HeartbeatParameters, Uuid};

const TOPIC: &str = "orders";
const WAIT: Duration = Duration::from_secs(10);

struct Changes(mpsc::Sender<(&'static str, Uuid)>);

impl ClientConnectionListener for Changes {
    fn on_client_connected(&self, _topic: &str, client: Uuid) {
        let _ = self.0.send(("connected", client));
    }
    fn on_client_disconnected(&self, _topic: &str, client: Uuid) {
        let _ = self.0.send(("disconnected", client));
    }
}

fn node() -> HeartbeatServer {
    let node = HeartbeatServer::builder()
        .in_memory()
        .server_port(0)
        .build()
        .unwrap();
    node.start().unwrap();
    node
}

#[test]
fn a_blocking_publisher_hears_a_blocking_subscriber_connect_receive_and_leave() {
    let publisher_node = node();
    let addr = publisher_node.local_addr().unwrap();
    let publisher = publisher_node.create_publisher(TOPIC).unwrap();
    let (changes, heard) = mpsc::channel();
    let params = HeartbeatParameters::builder()
        .heartbeat_rate(Duration::from_millis(50))
        .heartbeat_timeout(Duration::from_millis(50))
        .max_client_conn_checks(3)
        .build()
        .unwrap();
    publisher
        .activate_heartbeats(Changes(changes), params)
        .unwrap();

    let subscriber_node = node();
    let (messages, received) = mpsc::channel();
    let subscription = subscriber_node
        .subscribe(TOPIC, addr, move |_topic: &str, payload: &[u8]| {
            let _ = messages.send(payload.to_vec());
        })
        .unwrap();
    let client = subscriber_node.instance_id();
    assert_eq!(heard.recv_timeout(WAIT).unwrap(), ("connected", client));

    assert_eq!(
        publisher.send(b"first".to_vec()),
        1,
        "queued for the one subscriber"
    );
    assert_eq!(received.recv_timeout(WAIT).unwrap(), b"first");
    let stats = publisher_node.topics();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].topic, TOPIC);
    assert_eq!(stats[0].subscribers, vec![client]);
    assert_eq!(stats[0].connected, vec![client]);
    assert!(stats[0].heartbeats_active && stats[0].heartbeats_sent > 0);

    drop(subscription);
    assert_eq!(heard.recv_timeout(WAIT).unwrap(), ("disconnected", client));
    publisher.deactivate_heartbeats();
    assert!(!publisher.is_heartbeats_active());
    assert!(publisher_node.topics()[0].connected.is_empty());
}
