//! Topic heartbeats between real nodes: who is connected, who left, and what
//! never reaches a handler.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use heartbeater::{
    ClientConnectionListener, HeartbeatParameters, HeartbeatServer, TopicError, TopicHandler, Uuid,
};

const TOPIC: &str = "utopic1";

/// One callback: which, for whom, when.
type Callback = (&'static str, Uuid, Instant);

/// Records every callback with the moment it ran.
#[derive(Clone, Default)]
struct Recorder {
    events: Arc<Mutex<Vec<Callback>>>,
}

impl Recorder {
    fn all(&self) -> Vec<Callback> {
        self.events.lock().unwrap().clone()
    }

    fn count(&self, kind: &str, client: Uuid) -> usize {
        self.all()
            .iter()
            .filter(|(k, c, _)| *k == kind && *c == client)
            .count()
    }

    async fn wait_for(&self, kind: &str, client: Uuid) -> Instant {
        eventually(&format!("{kind} {client}"), || {
            self.all()
                .iter()
                .find(|(k, c, _)| *k == kind && *c == client)
                .map(|e| e.2)
        })
        .await
    }
}

impl ClientConnectionListener for Recorder {
    fn on_client_connected(&self, topic: &str, client: Uuid) {
        assert_eq!(topic, TOPIC);
        self.events
            .lock()
            .unwrap()
            .push(("connected", client, Instant::now()));
    }

    fn on_client_disconnected(&self, topic: &str, client: Uuid) {
        assert_eq!(topic, TOPIC);
        self.events
            .lock()
            .unwrap()
            .push(("disconnected", client, Instant::now()));
    }
}

/// Counts messages and answers requests with its own name.
#[derive(Clone)]
struct Counter {
    name: &'static str,
    messages: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Counter {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            messages: Arc::default(),
        }
    }

    fn received(&self) -> Vec<Vec<u8>> {
        self.messages.lock().unwrap().clone()
    }
}

impl TopicHandler for Counter {
    fn on_message(&self, topic: &str, payload: &[u8]) {
        assert_eq!(topic, TOPIC);
        self.messages.lock().unwrap().push(payload.to_vec());
    }

    fn on_request(&self, _topic: &str, payload: &[u8]) -> Option<Vec<u8>> {
        Some([self.name.as_bytes(), b":", payload].concat())
    }
}

fn params(rate_ms: u64) -> HeartbeatParameters {
    HeartbeatParameters::builder()
        .heartbeat_rate(Duration::from_millis(rate_ms))
        .heartbeat_timeout(Duration::from_millis(rate_ms))
        .max_client_conn_checks(3)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subscribers_connect_and_a_dropped_one_disconnects_within_the_bound() {
    let publisher_node = memory_node().await;
    let addr = publisher_node.local_addr().unwrap();
    let publisher = publisher_node.create_publisher(TOPIC).unwrap();
    let recorder = Recorder::default();
    let p = params(50);
    publisher.activate_heartbeats(recorder.clone(), p).unwrap();
    assert!(publisher.is_heartbeats_active());

    let (a, b) = (memory_node().await, memory_node().await);
    let sub_a = a.subscribe(TOPIC, addr, Counter::new("a")).unwrap();
    let _sub_b = b.subscribe(TOPIC, addr, Counter::new("b")).unwrap();
    recorder.wait_for("connected", a.instance_id()).await;
    recorder.wait_for("connected", b.instance_id()).await;

    // Let several heartbeats pass so the last answer is recent, then drop a.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(sub_a);
    let dropped = Instant::now();
    let at = recorder.wait_for("disconnected", a.instance_id()).await;
    let took = at - dropped;
    assert!(
        took <= p.detection_bound() + Duration::from_millis(500),
        "disconnected after {took:?}, bound {:?}",
        p.detection_bound()
    );
    // b keeps answering: still connected well after a's bound.
    tokio::time::sleep(p.detection_bound() * 2).await;
    assert_eq!(recorder.count("disconnected", b.instance_id()), 0);
    assert_eq!(
        recorder.count("connected", a.instance_id()),
        1,
        "each transition once"
    );
    assert_eq!(
        recorder.count("disconnected", a.instance_id()),
        1,
        "each transition once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publishers_own_node_subscribing_becomes_its_own_client() {
    let node = memory_node().await;
    let publisher = node.create_publisher(TOPIC).unwrap();
    let recorder = Recorder::default();
    publisher
        .activate_heartbeats(recorder.clone(), params(20))
        .unwrap();
    let counter = Counter::new("self");
    let _sub = node
        .subscribe(TOPIC, node.local_addr().unwrap(), counter.clone())
        .unwrap();
    recorder.wait_for("connected", node.instance_id()).await;
    eventually("the self-subscription to be listed", || {
        (publisher.subscribers() == vec![node.instance_id()]).then_some(())
    })
    .await;
    publisher.send("hello me").await;
    eventually("the message", || {
        (counter.received() == vec![b"hello me".to_vec()]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_never_reach_handlers_and_messages_and_requests_flow_meanwhile() {
    let node = memory_node().await;
    let addr = node.local_addr().unwrap();
    let publisher = node.create_publisher(TOPIC).unwrap();
    let recorder = Recorder::default();
    publisher
        .activate_heartbeats(recorder.clone(), params(5))
        .unwrap();
    let (a, b) = (memory_node().await, memory_node().await);
    let (ca, cb) = (Counter::new("a"), Counter::new("b"));
    let _sa = a.subscribe(TOPIC, addr, ca.clone()).unwrap();
    let _sb = b.subscribe(TOPIC, addr, cb.clone()).unwrap();
    recorder.wait_for("connected", a.instance_id()).await;
    recorder.wait_for("connected", b.instance_id()).await;

    for i in 0..20 {
        assert_eq!(publisher.send(format!("m{i}")).await, 2);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut answers: Vec<String> = publisher
        .request("ping", Duration::from_secs(5))
        .await
        .into_iter()
        .map(|r| String::from_utf8(r.payload).unwrap())
        .collect();
    answers.sort();
    assert_eq!(
        answers,
        vec!["a:ping", "b:ping"],
        "one request, several clients"
    );

    let expected: Vec<Vec<u8>> = (0..20).map(|i| format!("m{i}").into_bytes()).collect();
    eventually("all messages", || {
        (ca.received().len() == 20 && cb.received().len() == 20).then_some(())
    })
    .await;
    assert!(
        publisher.heartbeats_sent() > 20,
        "heartbeats ran meanwhile: {}",
        publisher.heartbeats_sent()
    );
    assert_eq!(
        ca.received(),
        expected,
        "only data, in order; no heartbeat frame"
    );
    assert_eq!(cb.received(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_deactivation_nothing_is_sent_and_nothing_fires() {
    let node = memory_node().await;
    let addr = node.local_addr().unwrap();
    let publisher = node.create_publisher(TOPIC).unwrap();
    let recorder = Recorder::default();
    publisher
        .activate_heartbeats(recorder.clone(), params(10))
        .unwrap();
    let client = memory_node().await;
    let sub = client.subscribe(TOPIC, addr, Counter::new("c")).unwrap();
    recorder.wait_for("connected", client.instance_id()).await;

    publisher.deactivate_heartbeats();
    assert!(!publisher.is_heartbeats_active());
    let sent = publisher.heartbeats_sent();
    let events = recorder.all().len();
    drop(sub); // would be a disconnection, were heartbeats active
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        publisher.heartbeats_sent(),
        sent,
        "no heartbeat after deactivation"
    );
    assert_eq!(
        recorder.all().len(),
        events,
        "no callback after deactivation"
    );

    // Reactivation starts fresh: the client is known again only once it answers.
    let fresh = Recorder::default();
    publisher
        .activate_heartbeats(fresh.clone(), params(10))
        .unwrap();
    let _again = client.subscribe(TOPIC, addr, Counter::new("c")).unwrap();
    fresh.wait_for("connected", client.instance_id()).await;
    assert_eq!(fresh.count("connected", client.instance_id()), 1);
    assert!(matches!(
        publisher.activate_heartbeats(Recorder::default(), params(10)),
        Err(TopicError::HeartbeatsAlreadyActive(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_listener_does_not_delay_the_heartbeat_timer() {
    struct Slow(Arc<AtomicUsize>);
    impl ClientConnectionListener for Slow {
        fn on_client_connected(&self, _: &str, _: Uuid) {
            std::thread::sleep(Duration::from_millis(500));
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn on_client_disconnected(&self, _: &str, _: Uuid) {}
    }
    let node = memory_node().await;
    let publisher = node.create_publisher(TOPIC).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    publisher
        .activate_heartbeats(Slow(calls.clone()), params(10))
        .unwrap();
    let client = memory_node().await;
    let _sub = client
        .subscribe(TOPIC, node.local_addr().unwrap(), Counter::new("c"))
        .unwrap();
    eventually("a heartbeat answer", || {
        (publisher.heartbeats_sent() >= 2).then_some(())
    })
    .await;
    let before = publisher.heartbeats_sent();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        publisher.heartbeats_sent() >= before + 10,
        "the timer kept its pace while the listener slept: {} -> {}",
        before,
        publisher.heartbeats_sent()
    );
    eventually("the slow callback", || {
        (calls.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn topic_errors_are_typed() {
    let node = memory_node().await;
    assert!(matches!(
        node.create_publisher(""),
        Err(TopicError::InvalidTopic(_))
    ));
    let first = node.create_publisher(TOPIC).unwrap();
    assert!(matches!(
        node.create_publisher(TOPIC),
        Err(TopicError::PublisherExists(_))
    ));
    drop(first);
    assert!(
        node.create_publisher(TOPIC).is_ok(),
        "dropping the publisher unpublishes"
    );
    let err = HeartbeatParameters::builder()
        .max_client_conn_checks(0)
        .build()
        .unwrap_err();
    assert!(matches!(err, TopicError::InvalidParameters(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_to_an_unpublished_topic_keeps_retrying_until_it_appears() {
    let node = memory_node().await;
    let client = memory_node().await;
    let counter = Counter::new("late");
    let sub = client
        .subscribe(TOPIC, node.local_addr().unwrap(), counter.clone())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!sub.is_connected(), "NOT_FOUND: no publisher yet");
    let publisher = node.create_publisher(TOPIC).unwrap();
    eventually("the subscription to connect", || {
        sub.is_connected().then_some(())
    })
    .await;
    publisher.send("late news").await;
    eventually("the message", || {
        (counter.received().len() == 1).then_some(())
    })
    .await;
}

#[allow(dead_code)]
fn assert_send_sync(
    p: heartbeater::TopicPublisher,
    s: heartbeater::TopicSubscriber,
    n: HeartbeatServer,
) {
    fn is<T: Send + Sync>(_: &T) {}
    is(&p);
    is(&s);
    is(&n);
}
