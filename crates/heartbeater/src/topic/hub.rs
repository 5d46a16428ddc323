//! The publisher's side: which topics a node publishes, who subscribes to
//! each, and the fan-out of frames to them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures_util::future::join_all;
use heartbeater_core::ValidationError;
use tokio::sync::mpsc;
use tonic::Status;
use uuid::Uuid;

use super::activation::{Activation, HeartbeatOutlet, Stopped};
use super::queue::{subscriber_queue, PushError, QueueLimits, QueueStream, SubscriberQueue};
use super::recent::Recent;
use super::types::{validate_topic, ClientConnectionListener, HeartbeatParameters, TopicError};
use crate::grpc::connection::Claimant;
use crate::grpc::proto::{FrameHeader, FrameKind, TopicFrame};
use crate::log_limit::SharedLogLimiter;

/// Frames queued per subscriber before `send` waits for it.
pub(crate) const SUBSCRIBER_QUEUE: usize = 1024;

/// Bytes (encoded frames) queued per subscriber before `send` waits for it.
/// With 1024 frames of up to 4 MiB each, a frame count alone would let one
/// stuck subscriber pin 4 GiB; this keeps it to 4 MiB (a frame bigger than
/// that is still sent, alone).
pub(crate) const SUBSCRIBER_QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// How long `send` waits for room in one subscriber's queue before that
/// subscriber is dropped as stuck, unless
/// [`TopicPublisher::set_stall_timeout`] says otherwise.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client whose subscription was dropped as stuck is not waited
/// for again: the subscriptions it opens afterwards still get every frame
/// there is room for, but a full queue is dropped at once instead of
/// holding `send` up for the stall timeout. Without it, a client that
/// opened a fresh subscription and stopped reading once per stall timeout
/// would hold every `send` up for ever. Subscriptions opened before the
/// drop (other processes on the same host, behind the same address) are
/// waited for as before.
pub(crate) const STALL_MEMORY: Duration = Duration::from_secs(60);

/// How long an instance id stays bound to the client that held it after
/// its last stream closed: long enough for that client to reconnect, so
/// that another client cannot take the id over the moment its holder dies.
pub(crate) const CLAIM_GRACE: Duration = Duration::from_secs(30);

/// Instance ids remembered after their last stream closed, at most (each
/// entry is a few dozen bytes); the oldest goes first.
const RELEASED_CLAIMS: usize = 64 * 1024;

/// Clients remembered as stuck at most (each entry is a few dozen bytes);
/// the oldest goes first.
const STALLED_CLIENTS: usize = 4096;

const LIMITS: QueueLimits = QueueLimits {
    frames: SUBSCRIBER_QUEUE,
    bytes: SUBSCRIBER_QUEUE_BYTES,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a plain map or vector update that
    // cannot be left half-done, so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The topics a node publishes, by name.
#[derive(Default)]
pub(crate) struct Topics {
    hubs: Mutex<HashMap<String, Arc<TopicHub>>>,
    /// Subscription streams open on all of them.
    open: Arc<AtomicUsize>,
}

/// Subscription streams one node serves at once, over all its topics: each
/// topic's own bound times the number of topics would be no bound at all.
pub const MAX_NODE_SUBSCRIPTIONS: usize = 16 * 1024;

/// One subscription's place in the node's count; given back on drop, by
/// whichever way the subscription ends (left, dropped as stalled, closed).
struct NodeSlot(Arc<AtomicUsize>);

impl NodeSlot {
    fn take(open: &Arc<AtomicUsize>) -> Option<NodeSlot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_NODE_SUBSCRIPTIONS).then_some(n + 1)
        })
        .ok()
        .map(|_| NodeSlot(open.clone()))
    }
}

impl Drop for NodeSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Topics {
    pub(crate) fn create(
        self: &Arc<Self>,
        topic: &str,
        publisher_id: Uuid,
    ) -> Result<TopicPublisher, TopicError> {
        validate_topic(topic)?;
        let mut hubs = lock(&self.hubs);
        if hubs.contains_key(topic) {
            return Err(TopicError::PublisherExists(topic.to_owned()));
        }
        let hub = Arc::new(TopicHub {
            topic: topic.to_owned(),
            publisher_id,
            subscribers: Mutex::default(),
            next_conn: AtomicU64::new(1),
            requests: Mutex::default(),
            next_request: AtomicU64::new(1),
            heartbeats: Mutex::new(None),
            next_heartbeat_request: AtomicU64::new(1),
            heartbeats_sent: AtomicU64::new(0),
            stall_timeout: Mutex::new(DEFAULT_STALL_TIMEOUT),
            stalled: Mutex::new(Recent::new(STALL_MEMORY, STALLED_CLIENTS)),
            released: Mutex::new(Recent::new(CLAIM_GRACE, RELEASED_CLAIMS)),
            stall_log: SharedLogLimiter::default(),
            node_open: self.open.clone(),
            closed: std::sync::atomic::AtomicBool::new(false),
            topics: Arc::downgrade(self),
        });
        hubs.insert(topic.to_owned(), hub.clone());
        Ok(TopicPublisher {
            inner: Arc::new(PublisherInner { hub }),
        })
    }

    pub(crate) fn get(&self, topic: &str) -> Option<Arc<TopicHub>> {
        lock(&self.hubs).get(topic).cloned()
    }

    fn forget(&self, hub: &Arc<TopicHub>) {
        let mut hubs = lock(&self.hubs);
        if hubs.get(&hub.topic).is_some_and(|h| Arc::ptr_eq(h, hub)) {
            hubs.remove(&hub.topic);
        }
    }

    /// What each published topic looks like now, sorted by name.
    pub(crate) fn stats(&self) -> Vec<TopicStats> {
        let hubs: Vec<_> = lock(&self.hubs).values().cloned().collect();
        let mut stats: Vec<TopicStats> = hubs.iter().map(|h| h.stats()).collect();
        stats.sort_by(|a, b| a.topic.cmp(&b.topic));
        stats
    }

    /// Stops heartbeats and ends every subscription stream of every topic
    /// (the node is stopping).
    pub(crate) fn close_all(&self) {
        let hubs: Vec<_> = lock(&self.hubs).values().cloned().collect();
        for hub in hubs {
            hub.close();
        }
    }
}

/// Who is remembered as stuck: a certificate, or a client as its share of
/// connections counts it (an IPv4 address, an IPv6 /64), since one host
/// may hold a whole /64 and subscribe from a new address each time.
fn stall_key(claimant: Claimant) -> Claimant {
    match claimant {
        Claimant::Address(ip) => Claimant::Address(crate::client_share::client_network(ip)),
        certificate => certificate,
    }
}

/// One published topic at one moment ([`crate::HeartbeatServer::topics`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicStats {
    /// The topic's name.
    pub topic: String,
    /// Instance ids of the subscription streams open now.
    pub subscribers: Vec<Uuid>,
    /// Whether the publisher heartbeats its clients.
    pub heartbeats_active: bool,
    /// Heartbeat requests sent since the publisher was created.
    pub heartbeats_sent: u64,
    /// Clients that answer heartbeats now (empty while heartbeats are off).
    pub connected: Vec<Uuid>,
}

struct Subscriber {
    conn: u64,
    instance: Uuid,
    claimant: Claimant,
    queue: SubscriberQueue,
    _slot: NodeSlot,
}

/// Why a subscription was not opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The topic serves [`MAX_SUBSCRIPTIONS`] streams already.
    TopicFull,
    /// The node serves [`MAX_NODE_SUBSCRIPTIONS`] streams already.
    NodeFull,
    /// The topic was unpublished meanwhile.
    Unpublished,
    /// The instance id has a stream open from another client (another
    /// certificate, or without mutual TLS another address): an instance id
    /// belongs to one client at a time.
    Claimed {
        /// The client that holds it.
        holder: Claimant,
    },
}

/// One answer to [`TopicPublisher::request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicResponse {
    /// The answering subscriber's instance id.
    pub client_instance_id: Uuid,
    /// Its answer.
    pub payload: Vec<u8>,
}

/// Subscription streams one topic serves at once. Each holds a queue of
/// frames and a connection; subscribing is a read, open to anyone who may
/// read, so it has a bound like every other read.
pub const MAX_SUBSCRIPTIONS: usize = 4096;

/// A request waiting for answers: where they go, and which subscription
/// streams have answered. One answer per stream: a subscriber that sends
/// the same answer again and again (request ids are sequential, easy to
/// guess) must not fill the slots meant for the others, nor queue without
/// bound.
struct Pending {
    tx: mpsc::UnboundedSender<TopicResponse>,
    answered: std::collections::HashSet<u64>,
}

/// One published topic.
pub(crate) struct TopicHub {
    topic: String,
    publisher_id: Uuid,
    subscribers: Mutex<Vec<Subscriber>>,
    next_conn: AtomicU64,
    requests: Mutex<HashMap<u64, Pending>>,
    next_request: AtomicU64,
    heartbeats: Mutex<Option<Activation>>,
    next_heartbeat_request: AtomicU64,
    heartbeats_sent: AtomicU64,
    stall_timeout: Mutex<Duration>,
    /// Clients dropped as stuck: when, and the first connection number
    /// opened after it (see [`STALL_MEMORY`]).
    stalled: Mutex<Recent<Claimant, u64>>,
    /// Instances whose last stream closed within [`CLAIM_GRACE`]: who held
    /// them, and when the stream closed.
    released: Mutex<Recent<Uuid, Claimant>>,
    stall_log: SharedLogLimiter,
    node_open: Arc<AtomicUsize>,
    /// Set when the topic is unpublished.
    closed: std::sync::atomic::AtomicBool,
    topics: Weak<Topics>,
}

impl HeartbeatOutlet for TopicHub {
    fn send_heartbeat(&self, request_id: u64) {
        self.offer_to_all(&self.heartbeat_frame(request_id));
    }
}

impl TopicHub {
    fn frame(&self, kind: FrameKind, request_id: u64, payload: Vec<u8>) -> TopicFrame {
        TopicFrame {
            header: Some(FrameHeader {
                kind: kind.into(),
                request_id,
                instance_id: self.publisher_id.to_string(),
                topic: self.topic.clone(),
            }),
            payload,
        }
    }

    fn stats(&self) -> TopicStats {
        let activation = lock(&self.heartbeats);
        TopicStats {
            topic: self.topic.clone(),
            subscribers: lock(&self.subscribers).iter().map(|s| s.instance).collect(),
            heartbeats_active: activation.is_some(),
            heartbeats_sent: self.heartbeats_sent.load(Ordering::Relaxed),
            connected: activation.as_ref().map_or_else(Vec::new, |a| a.connected()),
        }
    }

    /// A new subscription stream from `instance`, opened by `claimant`: its
    /// connection number and the frames to send it.
    ///
    /// An instance id is only a claim, and ids are public (`/api/topics`),
    /// so it is bound to the client that opened its first stream: while that
    /// stream is open, and for [`CLAIM_GRACE`] after the last one closed,
    /// another client's claim of the same id is refused. Once every stream
    /// of an instance has closed, the instance is reported disconnected (see
    /// [`TopicHub::remove_subscriber`]), so whoever claims the id later
    /// starts from disconnected and cannot inherit a connection.
    pub(crate) fn add_subscriber(
        &self,
        instance: Uuid,
        claimant: Claimant,
    ) -> Result<(u64, QueueStream), Refusal> {
        let mut subscribers = lock(&self.subscribers);
        if self.closed.load(Ordering::Acquire) {
            return Err(Refusal::Unpublished);
        }
        if let Some(holder) = subscribers
            .iter()
            .find(|s| s.instance == instance && s.claimant != claimant)
        {
            return Err(Refusal::Claimed {
                holder: holder.claimant,
            });
        }
        if let Some(holder) = self.recently_held(instance) {
            if holder != claimant {
                return Err(Refusal::Claimed { holder });
            }
        }
        if subscribers.len() >= MAX_SUBSCRIPTIONS {
            return Err(Refusal::TopicFull);
        }
        let slot = NodeSlot::take(&self.node_open).ok_or(Refusal::NodeFull)?;
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (queue, stream) = subscriber_queue(LIMITS);
        subscribers.push(Subscriber {
            conn,
            instance,
            claimant,
            queue,
            _slot: slot,
        });
        drop(subscribers);
        tracing::debug!(topic = %self.topic, %instance, conn, %claimant, "subscriber joined");
        Ok((conn, stream))
    }

    /// Stream `conn` has ended. When it was its instance's last, the
    /// instance is reported disconnected at once: a client with no stream
    /// open receives nothing, whatever it answered before, and its id is
    /// free for another client only from disconnected.
    pub(crate) fn remove_subscriber(&self, conn: u64) {
        let gone = {
            let mut subscribers = lock(&self.subscribers);
            let Some(i) = subscribers.iter().position(|s| s.conn == conn) else {
                return;
            };
            let left = subscribers.remove(i);
            left.queue.close();
            tracing::debug!(topic = %self.topic, conn, "subscriber left");
            (!subscribers.iter().any(|s| s.instance == left.instance))
                .then_some((left.instance, left.claimant))
        };
        if let Some((instance, claimant)) = gone {
            self.release(instance, claimant);
        }
    }

    /// The client that held `instance` until its last stream closed, within
    /// [`CLAIM_GRACE`].
    fn recently_held(&self, instance: Uuid) -> Option<Claimant> {
        lock(&self.released).get(&instance)
    }

    /// `instance`'s last stream, opened by `claimant`, has closed (left,
    /// or dropped as stuck): the id stays the claimant's for a while, and
    /// the instance, receiving nothing any more, is reported disconnected.
    fn release(&self, instance: Uuid, claimant: Claimant) {
        lock(&self.released).note(instance, |_| claimant);
        if let Some(activation) = lock(&self.heartbeats).as_ref() {
            activation.forget(instance);
        }
    }

    /// Whether stream `conn` is still one of the topic's subscribers (not
    /// gone, and not dropped for being too slow).
    fn is_subscribed(&self, conn: u64) -> bool {
        lock(&self.subscribers).iter().any(|s| s.conn == conn)
    }

    /// Queues heartbeat `frame` for every subscriber without waiting: it
    /// goes behind the data already queued (with a little slack past a full
    /// queue), and a subscriber without room even for that misses it.
    /// Heartbeats must never wait for a slow subscriber, and one that has
    /// stopped taking frames is, for the heartbeat's purpose, not receiving.
    pub(crate) fn offer_to_all(&self, frame: &TopicFrame) -> usize {
        lock(&self.subscribers)
            .iter()
            .filter(|s| s.queue.try_push_heartbeat(frame.clone()).is_ok())
            .count()
    }

    /// Queues `frame` for every subscriber; returns for how many it was
    /// queued. Waits while queues are full, for all of them at once and for
    /// at most the stall timeout: a subscriber still without room by then is
    /// dropped (see [`TopicHub::drop_stalled`]), so one stuck subscriber
    /// holds `send` up once, for the stall timeout, and never again.
    async fn send_to_all(&self, frame: TopicFrame) -> usize {
        let targets: Vec<(u64, Uuid, Claimant, SubscriberQueue)> = lock(&self.subscribers)
            .iter()
            .map(|s| (s.conn, s.instance, s.claimant, s.queue.clone()))
            .collect();
        let mut delivered = 0;
        let mut full = Vec::new();
        for (conn, instance, claimant, queue) in targets {
            match queue.try_push(frame.clone()) {
                Ok(()) => delivered += 1,
                Err(PushError::Full(_)) => full.push((conn, instance, claimant, queue)),
                Err(PushError::Gone) => {}
            }
        }
        if full.is_empty() {
            return delivered;
        }
        let stall = *lock(&self.stall_timeout);
        // A client stuck recently is not waited for again.
        let (again, waited_for): (Vec<_>, Vec<_>) = full
            .into_iter()
            .partition(|(conn, _, claimant, _)| self.stuck_recently(claimant, *conn));
        for (conn, instance, claimant, _) in again {
            self.drop_stalled(conn, instance, claimant, Duration::ZERO);
        }
        let waits = waited_for
            .into_iter()
            .map(|(conn, instance, claimant, queue)| {
                let frame = frame.clone();
                async move {
                    let waited = tokio::time::timeout(stall, queue.push(frame)).await;
                    (conn, instance, claimant, waited)
                }
            });
        for (conn, instance, claimant, waited) in join_all(waits).await {
            match waited {
                Ok(Ok(())) => delivered += 1,
                Ok(Err(_gone)) => {}
                Err(_elapsed) => self.drop_stalled(conn, instance, claimant, stall),
            }
        }
        delivered
    }

    /// Whether stream `conn` of `claimant` was opened after a subscription
    /// of the same client was dropped as stuck, within [`STALL_MEMORY`].
    fn stuck_recently(&self, claimant: &Claimant, conn: u64) -> bool {
        lock(&self.stalled)
            .get(&stall_key(*claimant))
            .is_some_and(|opened_after| conn >= opened_after)
    }

    fn remember_stuck(&self, claimant: Claimant) {
        let opened_after = self.next_conn.load(Ordering::Relaxed);
        // A later drop of the same client keeps the earliest mark: streams
        // opened since the first drop are all fresh ones.
        lock(&self.stalled).note(stall_key(claimant), |before| before.unwrap_or(opened_after));
    }

    /// Drops stream `conn`, whose queue stayed full for `stall`: its frames
    /// are freed, its stream ends with `RESOURCE_EXHAUSTED` (its library
    /// subscribes again), its answers no longer count, and, with heartbeats
    /// active, `instance` is reported disconnected if it was connected and
    /// has no other stream open.
    fn drop_stalled(&self, conn: u64, instance: Uuid, claimant: Claimant, stall: Duration) {
        self.remember_stuck(claimant);
        let still_there = {
            let mut subscribers = lock(&self.subscribers);
            let Some(i) = subscribers.iter().position(|s| s.conn == conn) else {
                // Left, or dropped by a concurrent send, in the meantime.
                return;
            };
            let dropped = subscribers.remove(i);
            let why = if stall.is_zero() {
                "subscriber too slow: its queue is full, and this client was dropped as stuck within the last minute; subscribe again".to_owned()
            } else {
                format!("subscriber too slow: its queue stayed full for {stall:?}; subscribe again")
            };
            dropped.queue.end_with(Status::resource_exhausted(why));
            subscribers.iter().any(|s| s.instance == instance)
        };
        if let Some(suppressed) = self.stall_log.due() {
            tracing::warn!(topic = %self.topic, %instance, conn, %claimant, ?stall, suppressed,
                "dropped a subscriber too slow to keep up");
        }
        if !still_there {
            self.release(instance, claimant);
        }
    }

    pub(crate) fn heartbeat_frame(&self, request_id: u64) -> TopicFrame {
        self.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
        self.frame(FrameKind::HeartbeatRequest, request_id, Vec::new())
    }

    /// An answer to request `request_id` on stream `conn` of `instance`.
    pub(crate) fn on_response(&self, conn: u64, request_id: u64, instance: Uuid, payload: Vec<u8>) {
        if !self.is_subscribed(conn) {
            return;
        }
        let mut requests = lock(&self.requests);
        if let Some(pending) = requests.get_mut(&request_id) {
            if pending.answered.insert(conn) {
                let _ = pending.tx.send(TopicResponse {
                    client_instance_id: instance,
                    payload,
                });
            }
        }
    }

    /// A heartbeat answer on stream `conn` of `instance`. A stream dropped
    /// for being too slow no longer counts, so its late answers cannot undo
    /// the disconnection it was reported for.
    pub(crate) fn on_heartbeat_response(&self, conn: u64, request_id: u64, instance: Uuid) {
        if !self.is_subscribed(conn) {
            return;
        }
        if let Some(activation) = lock(&self.heartbeats).as_ref() {
            activation.on_response(request_id, instance);
        }
    }

    fn close(&self) {
        self.deactivate();
        let mut subscribers = lock(&self.subscribers);
        // Under the lock a subscription checks it against: none joins a
        // topic that is gone.
        self.closed.store(true, Ordering::Release);
        for s in subscribers.drain(..) {
            s.queue.close();
        }
    }

    fn deactivate(&self) -> Option<Stopped> {
        let taken = lock(&self.heartbeats).take();
        taken.map(|activation| {
            let stopped = activation.stop();
            self.next_heartbeat_request
                .store(stopped.next_request, Ordering::Relaxed);
            stopped
        })
    }
}

/// Publishes one topic from a node: sends messages and requests to every
/// subscriber, and can heartbeat them to learn which are connected.
///
/// Every subscriber has a queue of its own, bounded to 1024 frames and
/// 4 MiB: `send` waits (backpressure) while a subscriber's queue is full,
/// for every full queue at once, but for at most the stall timeout
/// ([`TopicPublisher::set_stall_timeout`], default
/// [`DEFAULT_STALL_TIMEOUT`]). A subscriber whose queue is still full then
/// is stuck: it is dropped (its stream ends with `RESOURCE_EXHAUSTED`, and
/// the subscriber library subscribes again), reported disconnected to the
/// listener if heartbeats are active and it was connected, and never holds
/// `send` up again. A subscriber that keeps up loses nothing.
///
/// Clones share the publisher. When the last clone is dropped, the topic is
/// unpublished: heartbeats stop and every subscription stream ends.
#[derive(Clone)]
pub struct TopicPublisher {
    inner: Arc<PublisherInner>,
}

/// Unpublishes the topic when the last publisher clone goes.
struct PublisherInner {
    hub: Arc<TopicHub>,
}

impl Drop for PublisherInner {
    fn drop(&mut self) {
        self.hub.close();
        if let Some(topics) = self.hub.topics.upgrade() {
            topics.forget(&self.hub);
        }
    }
}

impl std::fmt::Debug for TopicPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicPublisher")
            .field("topic", &self.inner.hub.topic)
            .field("heartbeats_active", &self.is_heartbeats_active())
            .field("stall_timeout", &self.stall_timeout())
            .finish()
    }
}

impl TopicPublisher {
    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.inner.hub.topic
    }

    /// Sends one message to every current subscriber. Returns how many
    /// subscribers it was queued for.
    ///
    /// Waits while subscribers' queues are full, at most the stall timeout;
    /// the subscribers still full then are dropped as stuck and not counted
    /// (see [`TopicPublisher`]).
    pub async fn send(&self, payload: impl Into<Vec<u8>>) -> usize {
        let frame = self.inner.hub.frame(FrameKind::Data, 0, payload.into());
        self.inner.hub.send_to_all(frame).await
    }

    /// Sends a request to every subscriber and collects the responses that
    /// arrive within `timeout`, from however many clients answer. Queueing
    /// the request waits like [`TopicPublisher::send`], and that wait is not
    /// part of `timeout`.
    pub async fn request(
        &self,
        payload: impl Into<Vec<u8>>,
        timeout: Duration,
    ) -> Vec<TopicResponse> {
        let id = self.inner.hub.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        lock(&self.inner.hub.requests).insert(
            id,
            Pending {
                tx,
                answered: std::collections::HashSet::new(),
            },
        );
        let frame = self.inner.hub.frame(FrameKind::Request, id, payload.into());
        let asked = self.inner.hub.send_to_all(frame).await;
        let mut responses = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while responses.len() < asked {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => responses.push(r),
                Ok(None) | Err(_) => break,
            }
        }
        lock(&self.inner.hub.requests).remove(&id);
        responses
    }

    /// How long `send` waits for room in a subscriber's queue before dropping
    /// that subscriber as stuck (1 ms to 1 hour; default
    /// [`DEFAULT_STALL_TIMEOUT`], 5 s). Shorter frees the other subscribers
    /// sooner from a stuck one, but drops a subscriber whose handler pauses
    /// for longer than this (it subscribes again, and may miss messages sent
    /// meanwhile). Applies to sends that start after the call.
    pub fn set_stall_timeout(&self, timeout: Duration) -> Result<(), TopicError> {
        const MIN: Duration = Duration::from_millis(1);
        const MAX: Duration = Duration::from_secs(3600);
        if !(MIN..=MAX).contains(&timeout) {
            return Err(TopicError::InvalidStallTimeout(ValidationError::new(
                "stall_timeout",
                format!("{timeout:?}; must be 1 ms to 1 hour"),
            )));
        }
        *lock(&self.inner.hub.stall_timeout) = timeout;
        Ok(())
    }

    /// The stall timeout in force; see [`TopicPublisher::set_stall_timeout`].
    pub fn stall_timeout(&self) -> Duration {
        *lock(&self.inner.hub.stall_timeout)
    }

    /// Starts heartbeating every subscriber at `params.heartbeat_rate`, and
    /// reporting to `listener` which clients connect and disconnect. Must be
    /// called within a tokio runtime.
    ///
    /// The listener's callbacks run on the runtime's blocking threads, one
    /// at a time, in the order the transitions happened; a thread is taken
    /// only while callbacks run, so idle activations hold none.
    pub fn activate_heartbeats(
        &self,
        listener: impl ClientConnectionListener,
        params: HeartbeatParameters,
    ) -> Result<(), TopicError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| TopicError::NoRuntime)?;
        let mut slot = lock(&self.inner.hub.heartbeats);
        if slot.is_some() {
            return Err(TopicError::HeartbeatsAlreadyActive(
                self.inner.hub.topic.clone(),
            ));
        }
        let first_request = self
            .inner
            .hub
            .next_heartbeat_request
            .load(Ordering::Relaxed);
        let outlet: Arc<dyn HeartbeatOutlet> = self.inner.hub.clone();
        *slot = Some(Activation::start(
            &runtime,
            self.inner.hub.topic.clone(),
            Arc::downgrade(&outlet),
            Arc::new(listener),
            params.config,
            first_request,
        ));
        Ok(())
    }

    /// Stops heartbeats and connection checks, without waiting for anything:
    /// it never blocks on a listener callback, so it is safe on a runtime
    /// thread and from inside a callback. No callback starts after this
    /// returns, late answers are ignored, and no `disconnected` is reported
    /// for the clients that were connected. A callback already running when
    /// it is called is not interrupted and may still be running when it
    /// returns; [`TopicPublisher::deactivate_heartbeats_and_wait`] also waits
    /// for it. Dropping the publisher and stopping the node deactivate the
    /// same way.
    pub fn deactivate_heartbeats(&self) {
        self.inner.hub.deactivate();
    }

    /// [`TopicPublisher::deactivate_heartbeats`], then waits (asynchronously)
    /// until the callback that was running, if any, has returned: once this
    /// completes, no callback of the activation is running and none will
    /// start. Do not await it from inside a callback, which would wait for
    /// itself. Returns at once when heartbeats were not active.
    pub async fn deactivate_heartbeats_and_wait(&self) {
        if let Some(stopped) = self.inner.hub.deactivate() {
            stopped.callbacks_finished().await;
        }
    }

    /// Whether heartbeats are active.
    pub fn is_heartbeats_active(&self) -> bool {
        lock(&self.inner.hub.heartbeats).is_some()
    }

    /// Instance ids of the subscription streams open now (a client may have
    /// several), whether or not they answer heartbeats.
    pub fn subscribers(&self) -> Vec<Uuid> {
        lock(&self.inner.hub.subscribers)
            .iter()
            .map(|s| s.instance)
            .collect()
    }

    /// Heartbeat requests sent since the publisher was created (one per tick,
    /// whatever the number of subscribers).
    pub fn heartbeats_sent(&self) -> u64 {
        self.inner.hub.heartbeats_sent.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_subscription_answers_a_request_once() {
        let topics = Arc::new(Topics::default());
        let publisher = topics.create("t", Uuid::new_v4()).unwrap();
        let hub = publisher.inner.hub.clone();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let (conn_a, _frames_a) = hub.add_subscriber(a, client(1)).unwrap();
        let (conn_b, _frames_b) = hub.add_subscriber(b, client(2)).unwrap();
        let asking = publisher.clone();
        let request =
            tokio::spawn(async move { asking.request("q", Duration::from_millis(500)).await });
        let id = loop {
            if let Some(&id) = lock(&hub.requests).keys().next() {
                break id;
            }
            tokio::task::yield_now().await;
        };
        // The first subscription answers five times, before the other.
        for _ in 0..5 {
            hub.on_response(conn_a, id, a, b"again".to_vec());
        }
        hub.on_response(conn_b, id, b, b"once".to_vec());
        let responses = request.await.unwrap();
        let from: Vec<Uuid> = responses.iter().map(|r| r.client_instance_id).collect();
        assert_eq!(from, vec![a, b], "one answer each");
    }

    #[test]
    fn a_topic_serves_so_many_subscriptions_and_no_more() {
        let topics = Arc::new(Topics::default());
        let publisher = topics.create("t", Uuid::new_v4()).unwrap();
        let hub = publisher.inner.hub.clone();
        let held: Vec<_> = (0..MAX_SUBSCRIPTIONS)
            .map(|_| {
                hub.add_subscriber(Uuid::new_v4(), client(1))
                    .expect("within the bound")
            })
            .collect();
        assert_eq!(
            hub.add_subscriber(Uuid::new_v4(), client(1)).err(),
            Some(Refusal::TopicFull)
        );
        hub.remove_subscriber(held[0].0);
        assert!(
            hub.add_subscriber(Uuid::new_v4(), client(1)).is_ok(),
            "room again"
        );
    }

    #[test]
    fn a_node_serves_so_many_subscriptions_over_all_its_topics() {
        let topics = Arc::new(Topics::default());
        let publishers: Vec<_> = (0..MAX_NODE_SUBSCRIPTIONS / MAX_SUBSCRIPTIONS + 1)
            .map(|n| topics.create(&format!("t{n}"), Uuid::new_v4()).unwrap())
            .collect();
        let mut held = Vec::new();
        for publisher in &publishers[1..] {
            for _ in 0..MAX_SUBSCRIPTIONS {
                held.push(
                    publisher
                        .inner
                        .hub
                        .add_subscriber(Uuid::new_v4(), client(1))
                        .expect("within the bound"),
                );
            }
        }
        let hub = &publishers[0].inner.hub;
        assert_eq!(
            hub.add_subscriber(Uuid::new_v4(), client(1)).err(),
            Some(Refusal::NodeFull),
            "a topic with room of its own, on a full node"
        );
        publishers[1].inner.hub.remove_subscriber(held[0].0);
        assert!(hub.add_subscriber(Uuid::new_v4(), client(1)).is_ok());
        // Unpublishing gives every subscription's place back.
        drop(publishers);
        assert_eq!(topics.open.load(Ordering::Acquire), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_dropped_as_stuck_does_not_hold_send_up_again() {
        use tokio::time::Instant;
        let topics = Arc::new(Topics::default());
        let publisher = topics.create("t", Uuid::new_v4()).unwrap();
        let hub = publisher.inner.hub.clone();
        let stall = publisher.stall_timeout();
        let send = |n: usize| {
            let publisher = publisher.clone();
            async move {
                for _ in 0..n {
                    publisher.send("m").await;
                }
            }
        };
        // A subscription that never reads: its queue fills, then a send
        // waits the stall timeout and drops it.
        let (_, _stuck) = hub.add_subscriber(Uuid::new_v4(), client(1)).unwrap();
        send(SUBSCRIBER_QUEUE).await;
        // Another process on the same host, subscribed before the drop.
        let (_, _neighbour) = hub.add_subscriber(Uuid::new_v4(), client(1)).unwrap();
        let start = Instant::now();
        assert_eq!(publisher.send("m").await, 1);
        assert!(start.elapsed() >= stall, "waited for it once");
        // The neighbour falls behind too: it was there before the drop, so
        // it is waited for like anyone.
        send(SUBSCRIBER_QUEUE - 1).await;
        let start = Instant::now();
        assert_eq!(publisher.send("m").await, 0);
        assert!(start.elapsed() >= stall, "the neighbour waited for");
        // The stuck client, a fresh subscription that does not read either:
        // not waited for again.
        let (_, _again) = hub.add_subscriber(Uuid::new_v4(), client(1)).unwrap();
        send(SUBSCRIBER_QUEUE).await;
        let start = Instant::now();
        assert_eq!(publisher.send("m").await, 0);
        assert_eq!(start.elapsed(), Duration::ZERO, "dropped at once");
        assert!(publisher.subscribers().is_empty());
        // Another client is still waited for, and so is this one later.
        tokio::time::advance(STALL_MEMORY).await;
        for n in [1, 2] {
            let (_, _frames) = hub.add_subscriber(Uuid::new_v4(), client(n)).unwrap();
            send(SUBSCRIBER_QUEUE).await;
            let start = Instant::now();
            publisher.send("m").await;
            assert!(start.elapsed() >= stall, "client {n} waited for");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_is_remembered_as_stuck_by_its_ipv6_64() {
        let topics = Arc::new(Topics::default());
        let publisher = topics.create("t", Uuid::new_v4()).unwrap();
        let hub = publisher.inner.hub.clone();
        let at = |a: &str| Claimant::Address(a.parse().unwrap());
        hub.remember_stuck(at("2001:db8:1:2::1"));
        let (conn, _frames) = hub
            .add_subscriber(Uuid::new_v4(), at("2001:db8:1:2::99"))
            .unwrap();
        assert!(
            hub.stuck_recently(&at("2001:db8:1:2::99"), conn),
            "same /64"
        );
        assert!(
            !hub.stuck_recently(&at("2001:db8:1:3::1"), conn),
            "another /64"
        );
    }

    #[test]
    fn no_subscription_joins_a_topic_that_was_unpublished() {
        let topics = Arc::new(Topics::default());
        let publisher = topics.create("t", Uuid::new_v4()).unwrap();
        let hub = publisher.inner.hub.clone();
        drop(publisher);
        assert_eq!(
            hub.add_subscriber(Uuid::new_v4(), client(1)).err(),
            Some(Refusal::Unpublished)
        );
        assert_eq!(topics.open.load(Ordering::Acquire), 0);
    }

    fn client(n: u8) -> Claimant {
        Claimant::Address(std::net::IpAddr::from([192, 0, 2, n]))
    }

    #[tokio::test(start_paused = true)]
    async fn an_instance_id_belongs_to_one_client_while_its_stream_is_open_and_a_while_after() {
        let topics = Arc::new(Topics::default());
        let publisher = topics.create("t", Uuid::new_v4()).unwrap();
        let hub = publisher.inner.hub.clone();
        let id = Uuid::new_v4();
        let (first, _frames) = hub.add_subscriber(id, client(1)).unwrap();
        // The same client may open a second stream; another may not.
        let (second, _more) = hub.add_subscriber(id, client(1)).expect("same client");
        assert_eq!(
            hub.add_subscriber(id, client(2)).err(),
            Some(Refusal::Claimed { holder: client(1) })
        );
        hub.remove_subscriber(first);
        assert!(
            hub.add_subscriber(id, client(2)).is_err(),
            "one stream is still open"
        );
        hub.remove_subscriber(second);
        assert_eq!(
            hub.add_subscriber(id, client(2)).err(),
            Some(Refusal::Claimed { holder: client(1) }),
            "still its holder's for a while after its last stream closed"
        );
        let (again, _back) = hub
            .add_subscriber(id, client(1))
            .expect("its holder is back");
        hub.remove_subscriber(again);
        tokio::time::advance(CLAIM_GRACE).await;
        assert!(
            hub.add_subscriber(id, client(2)).is_ok(),
            "free after the grace"
        );
    }
}
