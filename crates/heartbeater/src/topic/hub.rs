//! The publisher's side: which topics a node publishes, who subscribes to
//! each, and the fan-out of frames to them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures_util::future::join_all;
use heartbeater_core::ValidationError;
use tokio::sync::mpsc;
use tonic::Status;
use uuid::Uuid;

use super::activation::{Activation, HeartbeatOutlet, Stopped};
use super::queue::{subscriber_queue, PushError, QueueLimits, QueueStream, SubscriberQueue};
use super::types::{validate_topic, ClientConnectionListener, HeartbeatParameters, TopicError};
use crate::grpc::proto::{FrameHeader, FrameKind, TopicFrame};

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
    queue: SubscriberQueue,
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

    /// A new subscription stream from `instance`: its connection number and
    /// the frames to send it; `None` when the topic has
    /// [`MAX_SUBSCRIPTIONS`] already.
    pub(crate) fn add_subscriber(&self, instance: Uuid) -> Option<(u64, QueueStream)> {
        let mut subscribers = lock(&self.subscribers);
        if subscribers.len() >= MAX_SUBSCRIPTIONS {
            return None;
        }
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (queue, stream) = subscriber_queue(LIMITS);
        subscribers.push(Subscriber {
            conn,
            instance,
            queue,
        });
        drop(subscribers);
        tracing::debug!(topic = %self.topic, %instance, conn, "subscriber joined");
        Some((conn, stream))
    }

    pub(crate) fn remove_subscriber(&self, conn: u64) {
        let mut subscribers = lock(&self.subscribers);
        if let Some(i) = subscribers.iter().position(|s| s.conn == conn) {
            subscribers.remove(i).queue.close();
            tracing::debug!(topic = %self.topic, conn, "subscriber left");
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
        let targets: Vec<(u64, Uuid, SubscriberQueue)> = lock(&self.subscribers)
            .iter()
            .map(|s| (s.conn, s.instance, s.queue.clone()))
            .collect();
        let mut delivered = 0;
        let mut full = Vec::new();
        for (conn, instance, queue) in targets {
            match queue.try_push(frame.clone()) {
                Ok(()) => delivered += 1,
                Err(PushError::Full(_)) => full.push((conn, instance, queue)),
                Err(PushError::Gone) => {}
            }
        }
        if full.is_empty() {
            return delivered;
        }
        let stall = *lock(&self.stall_timeout);
        let waits = full.into_iter().map(|(conn, instance, queue)| {
            let frame = frame.clone();
            async move {
                let waited = tokio::time::timeout(stall, queue.push(frame)).await;
                (conn, instance, waited)
            }
        });
        for (conn, instance, waited) in join_all(waits).await {
            match waited {
                Ok(Ok(())) => delivered += 1,
                Ok(Err(_gone)) => {}
                Err(_elapsed) => self.drop_stalled(conn, instance, stall),
            }
        }
        delivered
    }

    /// Drops stream `conn`, whose queue stayed full for `stall`: its frames
    /// are freed, its stream ends with `RESOURCE_EXHAUSTED` (its library
    /// subscribes again), its answers no longer count, and, with heartbeats
    /// active, `instance` is reported disconnected if it was connected and
    /// has no other stream open.
    fn drop_stalled(&self, conn: u64, instance: Uuid, stall: Duration) {
        let still_there = {
            let mut subscribers = lock(&self.subscribers);
            let Some(i) = subscribers.iter().position(|s| s.conn == conn) else {
                // Left, or dropped by a concurrent send, in the meantime.
                return;
            };
            let dropped = subscribers.remove(i);
            dropped.queue.end_with(Status::resource_exhausted(format!(
                "subscriber too slow: its queue stayed full for {stall:?}; subscribe again"
            )));
            subscribers.iter().any(|s| s.instance == instance)
        };
        tracing::warn!(topic = %self.topic, %instance, conn, ?stall, "dropped a subscriber too slow to keep up");
        if !still_there {
            if let Some(activation) = lock(&self.heartbeats).as_ref() {
                activation.forget(instance);
            }
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
        for s in lock(&self.subscribers).drain(..) {
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
        let (conn_a, _frames_a) = hub.add_subscriber(a).unwrap();
        let (conn_b, _frames_b) = hub.add_subscriber(b).unwrap();
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
                hub.add_subscriber(Uuid::new_v4())
                    .expect("within the bound")
            })
            .collect();
        assert!(hub.add_subscriber(Uuid::new_v4()).is_none());
        hub.remove_subscriber(held[0].0);
        assert!(hub.add_subscriber(Uuid::new_v4()).is_some(), "room again");
    }
}
