//! The subscriber's side: one stream per subscription to the publisher's
//! node, re-opened after a failure for as long as the subscription lives.
//!
//! Two tasks per subscription: the session reads the stream and puts every
//! message, request and heartbeat, in order, on one bounded queue; the
//! delivery task takes them off in batches, hands the handler's share of a
//! batch to a blocking thread (the handler is user code and may block), and
//! sends the answers once it is back. A heartbeat is answered only once the
//! messages before it have been handled, so an answer proves delivery. When
//! the handler falls behind, the queue fills, the session stops reading, and
//! HTTP/2 flow control pushes back on the publisher; memory stays bounded.
//!
//! The delivery task takes a blocking thread per batch, not one for the
//! subscription's life: a `spawn_blocking` loop per subscription would hold
//! one of the runtime's blocking threads (512 by default) for as long as the
//! subscription lives, so a few hundred subscriptions would starve
//! everything else that needs one, and a thread per subscription would cost
//! a thread even while idle.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use uuid::Uuid;

use super::types::{validate_topic, TopicError, TopicHandler};
use crate::driver::outbound::Outbound;
use crate::error::{ClientError, Unreachable};
use crate::grpc::proto::topic_service_client::TopicServiceClient;
use crate::grpc::proto::{FrameHeader, FrameKind, TopicFrame};

const FIRST_RETRY: Duration = Duration::from_millis(50);
const LAST_RETRY: Duration = Duration::from_secs(2);
const OUTBOUND_QUEUE: usize = 1024;
/// Frames (messages, requests, heartbeats) read but not yet handled, per
/// subscription, before the stream stops being read.
const HANDLER_QUEUE: usize = 256;
/// Payload bytes read but not yet handled, per subscription: with frames of
/// up to 4 MiB, a frame count alone would allow 1 GiB. A bigger payload is
/// still taken, alone.
const HANDLER_QUEUE_BYTES: u32 = 8 * 1024 * 1024;
/// Frames handed to one blocking job at most.
const HANDLER_BATCH: usize = 64;

/// Where a subscription stands, as [`TopicSubscriber::state`] and
/// [`TopicSubscriber::watch_state`] publish it. A subscription tries again,
/// with backoff, from every state but `Connected`, until it is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriptionState {
    /// Opening the first stream: nothing has answered yet.
    Connecting,
    /// The publisher's node accepted the subscription; messages flow.
    Connected,
    /// The publisher's node answered, but it does not publish the topic
    /// (not yet, or no longer).
    NotFound,
    /// The stream could not be opened, or it ended.
    Retrying {
        /// Why, in words: nothing listens on the port, the node refused the
        /// token, the connection was lost, ...
        reason: String,
    },
}

/// A live subscription. Dropping it unsubscribes: the stream closes, and the
/// publisher stops hearing this client's heartbeat answers.
#[must_use = "dropping a TopicSubscriber unsubscribes at once"]
pub struct TopicSubscriber {
    topic: String,
    publisher: SocketAddr,
    state: watch::Receiver<SubscriptionState>,
    stopped: Arc<AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for TopicSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicSubscriber")
            .field("topic", &self.topic)
            .field("publisher", &self.publisher)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl TopicSubscriber {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The publisher's node.
    pub fn publisher(&self) -> SocketAddr {
        self.publisher
    }

    /// Whether the stream to the publisher is open now.
    pub fn is_connected(&self) -> bool {
        *self.state.borrow() == SubscriptionState::Connected
    }

    /// Where the subscription stands now.
    pub fn state(&self) -> SubscriptionState {
        self.state.borrow().clone()
    }

    /// The subscription's state as it changes, for a caller that reports
    /// it (`changed().await`, then `borrow_and_update()`). A reader that
    /// falls behind sees the latest state, not every one in between; a
    /// state is published once, not at every retry that ends the same way.
    pub fn watch_state(&self) -> watch::Receiver<SubscriptionState> {
        self.state.clone()
    }

    /// Unsubscribes (the same as dropping it). A handler call already
    /// running finishes; no other starts.
    pub fn unsubscribe(self) {}
}

impl Drop for TopicSubscriber {
    fn drop(&mut self) {
        // Frames already queued for the handler are not delivered any more.
        self.stopped.store(true, Ordering::SeqCst);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// What the session read, in the order it arrived.
enum Work {
    /// For the handler; holds its share of the queue's byte budget until
    /// handled.
    Call(Call, OwnedSemaphorePermit),
    /// Answered once everything before it was handled.
    Heartbeat {
        request_id: u64,
        reply: mpsc::Sender<TopicFrame>,
    },
}

enum Call {
    Message(Vec<u8>),
    Request {
        request_id: u64,
        payload: Vec<u8>,
        reply: mpsc::Sender<TopicFrame>,
    },
}

/// Subscribes node `instance` to `topic` at `publisher`.
pub(crate) fn subscribe(
    instance: Uuid,
    topic: &str,
    publisher: SocketAddr,
    handler: Arc<dyn TopicHandler>,
    outbound: Outbound,
) -> Result<TopicSubscriber, TopicError> {
    validate_topic(topic)?;
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| TopicError::NoRuntime)?;
    let (stop_tx, stop_rx) = oneshot::channel();
    let (state_tx, state) = watch::channel(SubscriptionState::Connecting);
    let stopped = Arc::new(AtomicBool::new(false));
    let (work_tx, work_rx) = mpsc::channel(HANDLER_QUEUE);
    let delivery = Delivery {
        topic: topic.into(),
        instance_id: instance.to_string().into(),
        handler,
        stopped: stopped.clone(),
    };
    runtime.spawn(delivery.run(work_rx));
    let session = Session {
        instance,
        topic: topic.to_owned(),
        publisher,
        state: state_tx,
        work: work_tx,
        budget: Arc::new(Semaphore::new(HANDLER_QUEUE_BYTES as usize)),
        outbound,
    };
    runtime.spawn(session.run(stop_rx));
    Ok(TopicSubscriber {
        topic: topic.to_owned(),
        publisher,
        state,
        stopped,
        stop: Some(stop_tx),
    })
}

fn frame(
    kind: FrameKind,
    request_id: u64,
    instance_id: &str,
    topic: &str,
    payload: Vec<u8>,
) -> TopicFrame {
    TopicFrame {
        header: Some(FrameHeader {
            kind: kind.into(),
            request_id,
            instance_id: instance_id.to_owned(),
            topic: topic.to_owned(),
        }),
        payload,
    }
}

/// Hands a subscription's frames to its handler, in order, and answers.
struct Delivery {
    topic: Arc<str>,
    instance_id: Arc<str>,
    handler: Arc<dyn TopicHandler>,
    stopped: Arc<AtomicBool>,
}

impl Delivery {
    /// Until the session is gone and the queue drained, or unsubscribed.
    async fn run(self, mut work: mpsc::Receiver<Work>) {
        let mut batch = Vec::with_capacity(HANDLER_BATCH);
        while work.recv_many(&mut batch, HANDLER_BATCH).await > 0 {
            let mut calls = Vec::new();
            for item in batch.drain(..) {
                match item {
                    Work::Call(call, permit) => calls.push((call, permit)),
                    Work::Heartbeat { request_id, reply } => {
                        // Everything that arrived before it, handled first.
                        self.handle(std::mem::take(&mut calls)).await;
                        let answer = frame(
                            FrameKind::HeartbeatResponse,
                            request_id,
                            &self.instance_id,
                            &self.topic,
                            Vec::new(),
                        );
                        // A full queue means the publisher is not reading: the
                        // missing answer is then exactly the right signal.
                        let _ = reply.try_send(answer);
                    }
                }
            }
            self.handle(calls).await;
            if self.stopped.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    /// Runs `calls` on a blocking thread, then sends the requests' answers.
    async fn handle(&self, calls: Vec<(Call, OwnedSemaphorePermit)>) {
        if calls.is_empty() || self.stopped.load(Ordering::SeqCst) {
            return;
        }
        let (topic, instance_id) = (self.topic.clone(), self.instance_id.clone());
        let (handler, stopped) = (self.handler.clone(), self.stopped.clone());
        let job = tokio::task::spawn_blocking(move || {
            let mut answers = Vec::new();
            for (call, _permit) in calls {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                match call {
                    Call::Message(payload) => handler.on_message(&topic, &payload),
                    Call::Request {
                        request_id,
                        payload,
                        reply,
                    } => {
                        if let Some(answer) = handler.on_request(&topic, &payload) {
                            let answer = frame(
                                FrameKind::Response,
                                request_id,
                                &instance_id,
                                &topic,
                                answer,
                            );
                            answers.push((reply, answer));
                        }
                    }
                }
            }
            answers
        });
        match job.await {
            Ok(answers) => {
                for (reply, answer) in answers {
                    // Fails only when that stream is gone: nobody to answer.
                    let _ = reply.send(answer).await;
                }
            }
            Err(e) if e.is_panic() => {
                tracing::error!(topic = %self.topic, "a TopicHandler call panicked; the rest of its batch is lost");
            }
            Err(_) => {}
        }
    }
}

/// Opens the channel to the publisher's node, with the subscribing node's
/// TLS configuration as it is now.
async fn connect(publisher: SocketAddr, outbound: &Outbound) -> Result<Channel, ClientError> {
    let target = publisher.to_string();
    outbound
        .endpoint(&publisher.ip().to_string(), publisher.port())
        .map_err(|message| ClientError::Unavailable {
            target: target.clone(),
            reason: Unreachable::Other,
            message,
        })?
        .connect()
        .await
        .map_err(|e| {
            crate::client::unreachable(
                &target,
                Some(&e),
                &e.to_string(),
                Some(outbound.transport()),
            )
        })
}

/// Why a stream ended.
enum StreamEnd {
    /// It could not be opened, or the publisher's node refused it.
    Opening(ClientError),
    /// It was open and broke, or was ended.
    Open(tonic::Status),
}

impl From<ClientError> for StreamEnd {
    fn from(e: ClientError) -> Self {
        StreamEnd::Opening(e)
    }
}

impl From<tonic::Status> for StreamEnd {
    fn from(status: tonic::Status) -> Self {
        StreamEnd::Open(status)
    }
}

struct Session {
    instance: Uuid,
    topic: String,
    publisher: SocketAddr,
    state: watch::Sender<SubscriptionState>,
    work: mpsc::Sender<Work>,
    budget: Arc<Semaphore>,
    outbound: Outbound,
}

impl Session {
    async fn run(self, mut stop: oneshot::Receiver<()>) {
        let mut retry = FIRST_RETRY;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                result = self.stream(&mut retry) => {
                    let next = match result {
                        Ok(()) => SubscriptionState::Retrying {
                            reason: "the publisher ended the stream".into(),
                        },
                        Err(StreamEnd::Opening(ClientError::NotFound(_))) => {
                            SubscriptionState::NotFound
                        }
                        Err(StreamEnd::Opening(e)) => {
                            tracing::debug!(topic = %self.topic, publisher = %self.publisher, error = ?e.to_string(), "cannot subscribe");
                            SubscriptionState::Retrying { reason: e.to_string() }
                        }
                        Err(StreamEnd::Open(status)) if status.code() == tonic::Code::ResourceExhausted => {
                            tracing::warn!(topic = %self.topic, publisher = %self.publisher, status = ?status.message(), "the publisher dropped this subscription as too slow; subscribing again");
                            SubscriptionState::Retrying {
                                reason: "the publisher dropped this subscription as too slow".into(),
                            }
                        }
                        Err(StreamEnd::Open(status)) => {
                            tracing::debug!(topic = %self.topic, publisher = %self.publisher, status = ?status.message(), "subscription stream failed");
                            let e = crate::client::status_error(
                                &status,
                                &self.publisher.to_string(),
                                Duration::ZERO,
                                None,
                            );
                            SubscriptionState::Retrying {
                                reason: format!("connection lost: {e}"),
                            }
                        }
                    };
                    self.set_state(next);
                }
            }
            tokio::select! {
                _ = &mut stop => break,
                () = tokio::time::sleep(retry) => {}
            }
            retry = (retry * 2).min(LAST_RETRY);
        }
    }

    /// Publishes `state` if it is news: a retry that fails the same way as
    /// the one before is not.
    fn set_state(&self, state: SubscriptionState) {
        self.state.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
    }

    /// Queues `item` for the delivery task, waiting while the queue is full:
    /// that wait is what pushes back on the publisher.
    async fn queue(&self, item: Work) -> Result<(), tonic::Status> {
        self.work
            .send(item)
            .await
            .map_err(|_| tonic::Status::cancelled("the subscription's delivery has ended"))
    }

    /// One stream, until it ends.
    async fn stream(&self, retry: &mut Duration) -> Result<(), StreamEnd> {
        let mut client = TopicServiceClient::new(connect(self.publisher, &self.outbound).await?);
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let instance_id = self.instance.to_string();
        let hello = frame(
            FrameKind::Subscribe,
            0,
            &instance_id,
            &self.topic,
            Vec::new(),
        );
        // The queue is empty: this cannot fail for lack of room.
        let _ = out_tx.try_send(hello);
        let mut request = tonic::Request::new(ReceiverStream::new(out_rx));
        if let Some(token) = self.outbound.token() {
            request.metadata_mut().insert("authorization", token);
        }
        // The call has no deadline: the stream lives as long as the
        // subscription, and the deadline an error could name is none.
        let mut inbound = client
            .subscribe(request)
            .await
            .map_err(|status| {
                let transport = Some(self.outbound.transport());
                let target = self.publisher.to_string();
                crate::client::status_error(&status, &target, Duration::ZERO, transport)
            })?
            .into_inner();
        self.set_state(SubscriptionState::Connected);
        *retry = FIRST_RETRY;
        while let Some(frame_in) = inbound.message().await? {
            let Some(header) = frame_in.header else {
                continue;
            };
            if header.topic != self.topic {
                // Only answer for the topic this stream subscribes to.
                continue;
            }
            let call = match FrameKind::try_from(header.kind).unwrap_or(FrameKind::Unspecified) {
                FrameKind::HeartbeatRequest => {
                    self.queue(Work::Heartbeat {
                        request_id: header.request_id,
                        reply: out_tx.clone(),
                    })
                    .await?;
                    continue;
                }
                FrameKind::Data => Call::Message(frame_in.payload),
                FrameKind::Request => Call::Request {
                    request_id: header.request_id,
                    payload: frame_in.payload,
                    reply: out_tx.clone(),
                },
                _ => continue,
            };
            let permit = self.reserve(&call).await?;
            self.queue(Work::Call(call, permit)).await?;
        }
        Ok(())
    }

    /// Takes `call`'s share of the byte budget, waiting while it is spent.
    async fn reserve(&self, call: &Call) -> Result<OwnedSemaphorePermit, tonic::Status> {
        let len = match call {
            Call::Message(payload) | Call::Request { payload, .. } => payload.len(),
        };
        // At least 1, so every call counts; at most the whole budget, so a
        // big payload waits for an empty queue instead of forever.
        let cost = u32::try_from(len)
            .unwrap_or(u32::MAX)
            .clamp(1, HANDLER_QUEUE_BYTES);
        self.budget
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| tonic::Status::cancelled("the subscription's delivery has ended"))
    }
}
