//! Topic heartbeats between real nodes: who is connected, who left, and what
//! never reaches a handler.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::*;
use heartbeater::{
    ClientConnectionListener, HeartbeatParameters, HeartbeatServer, SubscriptionState, TopicError,
    TopicHandler, Uuid,
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

/// Heartbeats whose answers count for 2 s: answers trail the data, and under
/// a flood a busy subscriber's answers may trail by more than a rate.
fn patient(rate_ms: u64) -> HeartbeatParameters {
    HeartbeatParameters::builder()
        .heartbeat_rate(Duration::from_millis(rate_ms))
        .heartbeat_timeout(Duration::from_secs(2))
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
async fn a_subscription_says_why_it_is_not_connected_and_when_it_is_again() {
    let client = memory_node().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let sub = client.subscribe(TOPIC, addr, Counter::new("c")).unwrap();
    let mut states = sub.watch_state();
    let retrying = tokio::time::timeout(
        PATIENCE,
        states.wait_for(|s| matches!(s, SubscriptionState::Retrying { .. })),
    )
    .await
    .expect("a retry reported")
    .expect("the subscription lives")
    .clone();
    let SubscriptionState::Retrying { reason } = retrying else {
        unreachable!()
    };
    assert!(reason.contains("nothing listens on"), "{reason}");

    let publishing = HeartbeatServer::builder()
        .in_memory()
        .server_host("127.0.0.1")
        .server_port(port)
        .build_async()
        .await
        .unwrap();
    let _publisher = publishing.create_publisher(TOPIC).unwrap();
    publishing.start().await.unwrap();
    tokio::time::timeout(
        PATIENCE,
        states.wait_for(|s| *s == SubscriptionState::Connected),
    )
    .await
    .expect("connected")
    .expect("the subscription lives");

    publishing.stop().await.unwrap();
    let lost = tokio::time::timeout(
        PATIENCE,
        states.wait_for(|s| matches!(s, SubscriptionState::Retrying { .. })),
    )
    .await
    .expect("the loss reported")
    .expect("the subscription lives")
    .clone();
    assert!(!sub.is_connected(), "{lost:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_to_an_unpublished_topic_keeps_retrying_until_it_appears() {
    let node = memory_node().await;
    let client = memory_node().await;
    let counter = Counter::new("late");
    let sub = client
        .subscribe(TOPIC, node.local_addr().unwrap(), counter.clone())
        .unwrap();
    let mut states = sub.watch_state();
    tokio::time::timeout(
        PATIENCE,
        states.wait_for(|s| *s == SubscriptionState::NotFound),
    )
    .await
    .expect("NOT_FOUND reported")
    .expect("the subscription lives");
    assert!(!sub.is_connected(), "NOT_FOUND: no publisher yet");
    let publisher = node.create_publisher(TOPIC).unwrap();
    eventually("the subscription to connect", || {
        sub.is_connected().then_some(())
    })
    .await;
    assert_eq!(sub.state(), SubscriptionState::Connected);
    publisher.send("late news").await;
    eventually("the message", || {
        (counter.received().len() == 1).then_some(())
    })
    .await;
}

/// A gate a blocking callback waits at until the test opens it.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn wait(&self) {
        let (open, cv) = &*self.0;
        let mut open = open.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
    }

    fn open(&self) {
        let (open, cv) = &*self.0;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }
}

/// Opens the gate when dropped, so a failing test does not leave a blocking
/// thread waiting forever.
struct OpenOnDrop(Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// A handler that, from its first message on, blocks at a gate (and records
/// when it got past it).
#[derive(Clone, Default)]
struct Stuck {
    gate: Gate,
    entered: Arc<AtomicBool>,
    released_at: Arc<Mutex<Option<Instant>>>,
}

impl TopicHandler for Stuck {
    fn on_message(&self, _topic: &str, _payload: &[u8]) {
        self.entered.store(true, Ordering::SeqCst);
        self.gate.wait();
        self.released_at
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
    }
}

/// A 1 KiB message that says its number.
fn numbered(i: usize) -> Vec<u8> {
    let mut m = format!("{i:06}:").into_bytes();
    m.resize(1024, b'x');
    m
}

/// Enough 1 KiB messages to fill what lies between a publisher and a
/// handler that stopped: the subscriber's queue and its HTTP/2 window (a few
/// MiB), then the publisher's queue for it (1024 frames).
const FLOOD: usize = 8000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_whose_handler_blocks_forever_does_not_stall_the_others_and_is_disconnected() {
    let node = memory_node().await;
    let addr = node.local_addr().unwrap();
    let publisher = node.create_publisher(TOPIC).unwrap();
    publisher
        .set_stall_timeout(Duration::from_millis(300))
        .unwrap();
    let recorder = Recorder::default();
    publisher
        .activate_heartbeats(recorder.clone(), patient(50))
        .unwrap();
    let (a, b) = (memory_node().await, memory_node().await);
    let stuck = Stuck::default();
    let _release = OpenOnDrop(stuck.gate.clone());
    let healthy = Counter::new("b");
    let _sa = a.subscribe(TOPIC, addr, stuck.clone()).unwrap();
    let _sb = b.subscribe(TOPIC, addr, healthy.clone()).unwrap();
    recorder.wait_for("connected", a.instance_id()).await;
    recorder.wait_for("connected", b.instance_id()).await;

    let started = Instant::now();
    let sending = tokio::time::timeout(PATIENCE * 3, async {
        for i in 0..FLOOD {
            publisher.send(numbered(i)).await;
        }
    })
    .await;
    assert!(
        sending.is_ok(),
        "send stalled behind the stuck subscriber ({:?})",
        started.elapsed()
    );
    assert!(stuck.entered.load(Ordering::SeqCst));
    eventually("b to receive every message", || {
        (healthy.received().len() == FLOOD).then_some(())
    })
    .await;
    let expected: Vec<Vec<u8>> = (0..FLOOD).map(numbered).collect();
    assert!(
        healthy.received() == expected,
        "b lost or reordered messages"
    );
    recorder.wait_for("disconnected", a.instance_id()).await;
    assert_eq!(recorder.count("disconnected", b.instance_id()), 0);
    assert_eq!(recorder.count("disconnected", a.instance_id()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_is_dropped_after_the_stall_timeout_reported_at_once_and_comes_back() {
    let node = memory_node().await;
    let addr = node.local_addr().unwrap();
    let publisher = node.create_publisher(TOPIC).unwrap();
    assert_eq!(
        publisher.stall_timeout(),
        heartbeater::topic::DEFAULT_STALL_TIMEOUT
    );
    assert!(matches!(
        publisher.set_stall_timeout(Duration::ZERO),
        Err(TopicError::InvalidStallTimeout(_))
    ));
    let stall = Duration::from_millis(200);
    publisher.set_stall_timeout(stall).unwrap();
    assert_eq!(publisher.stall_timeout(), stall);
    // Heartbeat checks that would take 50 s to run out: a disconnection
    // within the test can only be the stall's.
    let slow_checks = HeartbeatParameters::builder()
        .heartbeat_rate(Duration::from_millis(50))
        .heartbeat_timeout(Duration::from_millis(50))
        .max_client_conn_checks(1000)
        .build()
        .unwrap();
    let recorder = Recorder::default();
    publisher
        .activate_heartbeats(recorder.clone(), slow_checks)
        .unwrap();
    let client = memory_node().await;
    let stuck = Stuck::default();
    let _release = OpenOnDrop(stuck.gate.clone());
    let sub = client.subscribe(TOPIC, addr, stuck.clone()).unwrap();
    recorder.wait_for("connected", client.instance_id()).await;

    let started = Instant::now();
    let mut delivered = Vec::new();
    let flood = tokio::time::timeout(PATIENCE * 3, async {
        for i in 0..FLOOD {
            delivered.push(publisher.send(numbered(i)).await);
        }
    });
    assert!(
        flood.await.is_ok(),
        "send stalled behind the stuck subscriber"
    );
    let took = started.elapsed();
    let dropped = recorder
        .wait_for("disconnected", client.instance_id())
        .await;
    assert!(
        dropped - started < PATIENCE,
        "reported {:?} after the flood began, long before its checks ran out",
        dropped - started
    );
    let before_drop = delivered.iter().take_while(|n| **n == 1).count();
    assert!(
        before_drop > 0 && before_drop < FLOOD && delivered[before_drop..].iter().all(|n| *n == 0),
        "queued for it until it was dropped, for nobody after"
    );
    assert!(
        took < stall + PATIENCE,
        "the stuck subscriber held send up once, for the stall timeout: {took:?}"
    );
    assert!(publisher.subscribers().is_empty(), "its stream was dropped");

    // Released, the subscriber reads its stream's end and subscribes again.
    stuck.gate.open();
    eventually("the subscriber to come back", || {
        (recorder.count("connected", client.instance_id()) == 2).then_some(())
    })
    .await;
    assert_eq!(publisher.subscribers(), vec![client.instance_id()]);
    assert_eq!(recorder.count("disconnected", client.instance_id()), 1);
    drop(sub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_is_answered_only_after_the_messages_before_it_reached_the_handler() {
    let node = memory_node().await;
    let publisher = node.create_publisher(TOPIC).unwrap();
    let recorder = Recorder::default();
    // A long timeout, so that only the held message, not a busy machine,
    // can leave three ticks in a row without an answer.
    publisher
        .activate_heartbeats(recorder.clone(), patient(100))
        .unwrap();
    let client = memory_node().await;
    let stuck = Stuck::default();
    let _release = OpenOnDrop(stuck.gate.clone());
    let sub = client
        .subscribe(TOPIC, node.local_addr().unwrap(), stuck.clone())
        .unwrap();
    recorder.wait_for("connected", client.instance_id()).await;

    // One message the handler holds on to: the heartbeats behind it wait.
    assert_eq!(publisher.send("hold").await, 1);
    recorder
        .wait_for("disconnected", client.instance_id())
        .await;
    assert!(
        sub.is_connected(),
        "the stream is fine: only the handler is behind"
    );
    assert!(stuck.released_at.lock().unwrap().is_none());

    stuck.gate.open();
    let again = eventually("connected again", || {
        recorder
            .all()
            .iter()
            .filter(|(k, c, _)| *k == "connected" && *c == client.instance_id())
            .nth(1)
            .map(|e| e.2)
    })
    .await;
    let released = stuck.released_at.lock().unwrap().unwrap();
    assert!(
        again >= released,
        "an answer counted before the handler was done with the message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_subscriptions_leave_the_blocking_threads_free() {
    const SUBSCRIPTIONS: usize = 600;
    let node = memory_node().await;
    let addr = node.local_addr().unwrap();
    let publisher = node.create_publisher(TOPIC).unwrap();
    let recorder = Recorder::default();
    publisher
        .activate_heartbeats(recorder.clone(), params(200))
        .unwrap();
    let client = memory_node().await;
    let counters: Vec<Counter> = (0..SUBSCRIPTIONS).map(|_| Counter::new("c")).collect();
    let _subs: Vec<_> = counters
        .iter()
        .map(|c| client.subscribe(TOPIC, addr, c.clone()).unwrap())
        .collect();
    eventually("every subscription to open", || {
        (publisher.subscribers().len() == SUBSCRIPTIONS).then_some(())
    })
    .await;
    recorder.wait_for("connected", client.instance_id()).await;
    assert_eq!(publisher.send("to all").await, SUBSCRIPTIONS);
    eventually("every handler to get the message", || {
        counters
            .iter()
            .all(|c| c.received().len() == 1)
            .then_some(())
    })
    .await;

    // The runtime has 512 blocking threads: 600 subscriptions each holding
    // one would leave this job queued forever.
    let job = tokio::time::timeout(PATIENCE, tokio::task::spawn_blocking(|| 42)).await;
    assert_eq!(job.ok().map(Result::unwrap), Some(42));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivating_never_waits_for_a_running_callback() {
    #[derive(Clone, Default)]
    struct Blocking {
        gate: Gate,
        entered: Arc<AtomicUsize>,
        returned: Arc<AtomicUsize>,
    }
    impl ClientConnectionListener for Blocking {
        fn on_client_connected(&self, _: &str, _: Uuid) {
            self.entered.fetch_add(1, Ordering::SeqCst);
            self.gate.wait();
            self.returned.fetch_add(1, Ordering::SeqCst);
        }
        fn on_client_disconnected(&self, _: &str, _: Uuid) {
            self.entered.fetch_add(1, Ordering::SeqCst);
        }
    }
    /// Runs `f` on a thread of its own; whether it returned within a second.
    fn returns_promptly(f: impl FnOnce() + Send + 'static) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            f();
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(1)).is_ok()
    }

    let node = memory_node().await;
    let publisher = node.create_publisher(TOPIC).unwrap();
    let client = memory_node().await;
    let _sub = client
        .subscribe(TOPIC, node.local_addr().unwrap(), Counter::new("c"))
        .unwrap();
    let entered = |l: &Blocking| {
        let l = l.clone();
        eventually("the callback to block", move || {
            (l.entered.load(Ordering::SeqCst) == 1).then_some(())
        })
    };

    // Plain deactivation returns while the callback still blocks.
    let first = Blocking::default();
    let _release = OpenOnDrop(first.gate.clone());
    publisher
        .activate_heartbeats(first.clone(), params(10))
        .unwrap();
    entered(&first).await;
    let p = publisher.clone();
    assert!(
        returns_promptly(move || p.deactivate_heartbeats()),
        "deactivate_heartbeats waited for the listener"
    );
    assert_eq!(first.returned.load(Ordering::SeqCst), 0);
    first.gate.open();

    // The async variant waits, without holding a thread, until it returned.
    let second = Blocking::default();
    let _release = OpenOnDrop(second.gate.clone());
    publisher
        .activate_heartbeats(second.clone(), params(10))
        .unwrap();
    entered(&second).await;
    let waiting = tokio::spawn({
        let p = publisher.clone();
        async move { p.deactivate_heartbeats_and_wait().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "returned while a callback ran");
    assert!(!publisher.is_heartbeats_active());
    second.gate.open();
    tokio::time::timeout(PATIENCE, waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.returned.load(Ordering::SeqCst), 1);

    // Dropping the publisher does not wait either; nothing starts afterwards.
    let third = Blocking::default();
    let _release = OpenOnDrop(third.gate.clone());
    publisher
        .activate_heartbeats(third.clone(), params(10))
        .unwrap();
    entered(&third).await;
    assert!(
        returns_promptly(move || drop(publisher)),
        "dropping the publisher waited for the listener"
    );
    third.gate.open();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for l in [&first, &second, &third] {
        assert_eq!(
            l.entered.load(Ordering::SeqCst),
            1,
            "a callback started after deactivation"
        );
    }
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

/// A client whose last stream closes receives nothing any more: it is
/// reported disconnected at once, not after its heartbeats go unanswered
/// (and its instance id can only be claimed again from disconnected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_stream_closes_is_disconnected_at_once() {
    let publisher_node = memory_node().await;
    let addr = publisher_node.local_addr().unwrap();
    let publisher = publisher_node.create_publisher(TOPIC).unwrap();
    let recorder = Recorder::default();
    // Heartbeats slow enough that missing them takes 10 s to notice.
    let slow = HeartbeatParameters::builder()
        .heartbeat_rate(Duration::from_secs(2))
        .heartbeat_timeout(Duration::from_secs(2))
        .max_client_conn_checks(5)
        .build()
        .unwrap();
    publisher
        .activate_heartbeats(recorder.clone(), slow)
        .unwrap();
    let client = memory_node().await;
    let subscription = client.subscribe(TOPIC, addr, Counter::new("c")).unwrap();
    recorder.wait_for("connected", client.instance_id()).await;
    drop(subscription);
    let closed = Instant::now();
    let at = recorder
        .wait_for("disconnected", client.instance_id())
        .await;
    assert!(
        at - closed < Duration::from_secs(2),
        "disconnected {:?} after its stream closed",
        at - closed
    );
}
