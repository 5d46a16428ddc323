//! The publisher's side: which topics a node publishes, who subscribes to
//! each, and the fan-out of frames to them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::Status;
use uuid::Uuid;

use super::activation::{Activation, HeartbeatOutlet};
use super::types::{validate_topic, ClientConnectionListener, HeartbeatParameters, TopicError};
use crate::proto::{FrameHeader, FrameKind, TopicFrame};

/// Frames queued per subscriber before `send` waits for it.
pub(crate) const SUBSCRIBER_QUEUE: usize = 1024;

pub(crate) type FrameSender = mpsc::Sender<Result<TopicFrame, Status>>;

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

    /// Stops heartbeats and ends every subscription stream of every topic
    /// (the node is stopping).
    pub(crate) fn close_all(&self) {
        let hubs: Vec<_> = lock(&self.hubs).values().cloned().collect();
        for hub in hubs {
            hub.close();
        }
    }
}

struct Subscriber {
    conn: u64,
    instance: Uuid,
    tx: FrameSender,
}

/// One answer to [`TopicPublisher::request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicResponse {
    /// The answering subscriber's instance id.
    pub client_instance_id: Uuid,
    /// Its answer.
    pub payload: Vec<u8>,
}

/// One published topic.
pub(crate) struct TopicHub {
    topic: String,
    publisher_id: Uuid,
    subscribers: Mutex<Vec<Subscriber>>,
    next_conn: AtomicU64,
    requests: Mutex<HashMap<u64, mpsc::UnboundedSender<TopicResponse>>>,
    next_request: AtomicU64,
    heartbeats: Mutex<Option<Activation>>,
    next_heartbeat_request: AtomicU64,
    heartbeats_sent: AtomicU64,
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

    pub(crate) fn add_subscriber(&self, instance: Uuid, tx: FrameSender) -> u64 {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        lock(&self.subscribers).push(Subscriber { conn, instance, tx });
        tracing::debug!(topic = %self.topic, %instance, conn, "subscriber joined");
        conn
    }

    pub(crate) fn remove_subscriber(&self, conn: u64) {
        lock(&self.subscribers).retain(|s| s.conn != conn);
        tracing::debug!(topic = %self.topic, conn, "subscriber left");
    }

    fn senders(&self) -> Vec<FrameSender> {
        lock(&self.subscribers)
            .iter()
            .map(|s| s.tx.clone())
            .collect()
    }

    /// Queues `frame` for every subscriber without waiting: a subscriber whose
    /// queue is full misses it. Used for heartbeats, which must never wait
    /// for a slow subscriber (and a subscriber too slow to take one is, for
    /// the heartbeat's purpose, not receiving).
    pub(crate) fn offer_to_all(&self, frame: &TopicFrame) -> usize {
        lock(&self.subscribers)
            .iter()
            .filter(|s| s.tx.try_send(Ok(frame.clone())).is_ok())
            .count()
    }

    async fn send_to_all(&self, frame: TopicFrame) -> usize {
        let mut delivered = 0;
        for tx in self.senders() {
            if tx.send(Ok(frame.clone())).await.is_ok() {
                delivered += 1;
            }
        }
        delivered
    }

    pub(crate) fn heartbeat_frame(&self, request_id: u64) -> TopicFrame {
        self.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
        self.frame(FrameKind::HeartbeatRequest, request_id, Vec::new())
    }

    pub(crate) fn on_response(&self, request_id: u64, instance: Uuid, payload: Vec<u8>) {
        if let Some(tx) = lock(&self.requests).get(&request_id) {
            let _ = tx.send(TopicResponse {
                client_instance_id: instance,
                payload,
            });
        }
    }

    pub(crate) fn on_heartbeat_response(&self, request_id: u64, instance: Uuid) {
        if let Some(activation) = lock(&self.heartbeats).as_ref() {
            activation.on_response(request_id, instance);
        }
    }

    fn close(&self) {
        self.deactivate();
        lock(&self.subscribers).clear();
    }

    fn deactivate(&self) {
        let taken = lock(&self.heartbeats).take();
        if let Some(activation) = taken {
            self.next_heartbeat_request
                .store(activation.stop(), Ordering::Relaxed);
        }
    }
}

/// Publishes one topic from a node: sends messages and requests to every
/// subscriber, and can heartbeat them to learn which are connected.
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
            .finish()
    }
}

impl TopicPublisher {
    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.inner.hub.topic
    }

    /// Sends one message to every current subscriber, waiting while a
    /// subscriber's queue (1024 frames) is full. Returns how many
    /// subscribers it was queued for.
    pub async fn send(&self, payload: impl Into<Vec<u8>>) -> usize {
        let frame = self.inner.hub.frame(FrameKind::Data, 0, payload.into());
        self.inner.hub.send_to_all(frame).await
    }

    /// Sends a request to every subscriber and collects the responses that
    /// arrive within `timeout`, from however many clients answer.
    pub async fn request(
        &self,
        payload: impl Into<Vec<u8>>,
        timeout: Duration,
    ) -> Vec<TopicResponse> {
        let id = self.inner.hub.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        lock(&self.inner.hub.requests).insert(id, tx);
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

    /// Starts heartbeating every subscriber at `params.heartbeat_rate`, and
    /// reporting to `listener` which clients connect and disconnect. Must be
    /// called within a tokio runtime.
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

    /// Stops heartbeats and connection checks. No callback runs after this
    /// returns (one already running finishes), late answers are ignored, and
    /// no `disconnected` is reported for the clients that were connected.
    pub fn deactivate_heartbeats(&self) {
        self.inner.hub.deactivate();
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
