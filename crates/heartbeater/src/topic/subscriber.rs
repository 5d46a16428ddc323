//! The subscriber's side: one stream per subscription to the publisher's
//! node, re-opened after a failure for as long as the subscription lives.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use uuid::Uuid;

use super::types::{validate_topic, TopicError, TopicHandler};
use crate::proto::topic_service_client::TopicServiceClient;
use crate::proto::{FrameHeader, FrameKind, TopicFrame};

const FIRST_RETRY: Duration = Duration::from_millis(50);
const LAST_RETRY: Duration = Duration::from_secs(2);
const OUTBOUND_QUEUE: usize = 1024;

/// A live subscription. Dropping it unsubscribes: the stream closes, and the
/// publisher stops hearing this client's heartbeat answers.
#[must_use = "dropping a TopicSubscriber unsubscribes at once"]
pub struct TopicSubscriber {
    topic: String,
    publisher: SocketAddr,
    connected: Arc<AtomicBool>,
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
        self.connected.load(Ordering::SeqCst)
    }

    /// Unsubscribes (the same as dropping it).
    pub fn unsubscribe(self) {}
}

impl Drop for TopicSubscriber {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

enum Work {
    Message(Vec<u8>),
    Request(u64, Vec<u8>, mpsc::Sender<TopicFrame>),
}

/// Subscribes node `instance` to `topic` at `publisher`.
pub(crate) fn subscribe(
    instance: Uuid,
    topic: &str,
    publisher: SocketAddr,
    handler: Arc<dyn TopicHandler>,
) -> Result<TopicSubscriber, TopicError> {
    validate_topic(topic)?;
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| TopicError::NoRuntime)?;
    let (stop_tx, stop_rx) = oneshot::channel();
    let connected = Arc::new(AtomicBool::new(false));

    // The handler runs on a thread of its own, so a slow handler never
    // delays heartbeat answers.
    let (work_tx, work_rx) = std_mpsc::channel::<Work>();
    {
        let topic = topic.to_owned();
        let instance_id = instance.to_string();
        runtime.spawn_blocking(move || {
            while let Ok(work) = work_rx.recv() {
                match work {
                    Work::Message(payload) => handler.on_message(&topic, &payload),
                    Work::Request(id, payload, reply) => {
                        if let Some(answer) = handler.on_request(&topic, &payload) {
                            let frame =
                                frame(FrameKind::Response, id, &instance_id, &topic, answer);
                            let _ = reply.blocking_send(frame);
                        }
                    }
                }
            }
        });
    }
    let session = Session {
        instance,
        topic: topic.to_owned(),
        publisher,
        connected: connected.clone(),
        work: work_tx,
    };
    runtime.spawn(session.run(stop_rx));
    Ok(TopicSubscriber {
        topic: topic.to_owned(),
        publisher,
        connected,
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

struct Session {
    instance: Uuid,
    topic: String,
    publisher: SocketAddr,
    connected: Arc<AtomicBool>,
    work: std_mpsc::Sender<Work>,
}

impl Session {
    async fn run(self, mut stop: oneshot::Receiver<()>) {
        let mut retry = FIRST_RETRY;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                result = self.stream(&mut retry) => {
                    self.connected.store(false, Ordering::SeqCst);
                    if let Err(status) = result {
                        tracing::debug!(topic = %self.topic, publisher = %self.publisher, %status, "subscription stream failed");
                    }
                }
            }
            tokio::select! {
                _ = &mut stop => break,
                () = tokio::time::sleep(retry) => {}
            }
            retry = (retry * 2).min(LAST_RETRY);
        }
        self.connected.store(false, Ordering::SeqCst);
    }

    /// One stream, until it ends.
    async fn stream(&self, retry: &mut Duration) -> Result<(), tonic::Status> {
        let channel = Endpoint::from_shared(format!("http://{}", self.publisher))
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut client = TopicServiceClient::new(channel);
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
        let mut inbound = client
            .subscribe(ReceiverStream::new(out_rx))
            .await?
            .into_inner();
        self.connected.store(true, Ordering::SeqCst);
        *retry = FIRST_RETRY;
        while let Some(frame_in) = inbound.message().await? {
            let Some(header) = frame_in.header else {
                continue;
            };
            if header.topic != self.topic {
                // Only answer for the topic this stream subscribes to.
                continue;
            }
            match FrameKind::try_from(header.kind).unwrap_or(FrameKind::Unspecified) {
                FrameKind::HeartbeatRequest => {
                    let answer = frame(
                        FrameKind::HeartbeatResponse,
                        header.request_id,
                        &instance_id,
                        &self.topic,
                        Vec::new(),
                    );
                    // A full queue means the publisher is not reading: the
                    // missing answer is then exactly the right signal.
                    let _ = out_tx.try_send(answer);
                }
                FrameKind::Data => {
                    let _ = self.work.send(Work::Message(frame_in.payload));
                }
                FrameKind::Request => {
                    let _ = self.work.send(Work::Request(
                        header.request_id,
                        frame_in.payload,
                        out_tx.clone(),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}
