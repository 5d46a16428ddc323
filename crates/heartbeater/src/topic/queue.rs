//! One subscriber's outbound queue on the publisher: frames waiting for that
//! subscriber's stream, bounded in frames and in bytes.
//!
//! Not a plain `mpsc` channel because the publisher must be able to give up
//! on a subscriber: [`SubscriberQueue::end_with`] throws the queued frames
//! away at once and makes the stream end with a status. With a channel, the
//! frames belong to the receiver, which the transport stops polling when the
//! subscriber stops reading (HTTP/2 flow control), so they would stay in
//! memory for as long as the stuck connection lives.
//!
//! The state is shared by the two ends only; the lock is held for a push or
//! a pop, never across an await or a user callback.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures_util::Stream;
use prost::Message;
use tokio::sync::Notify;
use tonic::Status;

use crate::grpc::proto::TopicFrame;

/// How much one subscriber's queue holds before `send` waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueLimits {
    /// Frames, whatever their size.
    pub(crate) frames: usize,
    /// Encoded bytes. A frame larger than this is still queued, alone, so a
    /// big message waits for an empty queue instead of never going.
    pub(crate) bytes: usize,
}

/// Frames a heartbeat may queue beyond the limits. A subscriber that keeps
/// up but is busy has a full queue most of the time (that is backpressure
/// working); its heartbeats then wait behind the data instead of being
/// missed, and its answer proves it got through the data. A stuck subscriber
/// runs out of this slack after a few ticks: from then on it misses them.
const HEARTBEAT_SLACK: usize = 4;

/// Why a frame was not queued.
#[derive(Debug)]
pub(crate) enum PushError {
    /// No room now; the frame is handed back.
    Full(TopicFrame),
    /// The stream is gone or ending: nothing will be delivered any more.
    Gone,
}

struct State {
    frames: VecDeque<(TopicFrame, usize)>,
    bytes: usize,
    /// Yielded next, then the stream ends; the queue is already empty.
    ending: Option<Status>,
    /// No frame will be pushed any more: the stream ends once drained.
    closed: bool,
    /// The stream was dropped (the subscriber's call is over).
    consumer_gone: bool,
    consumer: Option<Waker>,
}

struct Shared {
    limits: QueueLimits,
    state: Mutex<State>,
    /// Woken whenever room appears or the queue stops taking frames.
    room: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is a few field updates that cannot be left
        // half-done, so a poisoned lock still holds a consistent queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_consumer(state: &mut State) {
        if let Some(waker) = state.consumer.take() {
            waker.wake();
        }
    }
}

/// A new queue: the publisher's end and the stream the subscriber's call
/// returns.
pub(crate) fn subscriber_queue(limits: QueueLimits) -> (SubscriberQueue, QueueStream) {
    let shared = Arc::new(Shared {
        limits,
        state: Mutex::new(State {
            frames: VecDeque::new(),
            bytes: 0,
            ending: None,
            closed: false,
            consumer_gone: false,
            consumer: None,
        }),
        room: Notify::new(),
    });
    (
        SubscriberQueue {
            shared: shared.clone(),
        },
        QueueStream {
            shared,
            done: false,
        },
    )
}

/// The publisher's end. Cheap to clone; the stream ends (after draining)
/// only through [`SubscriberQueue::close`] or [`SubscriberQueue::end_with`],
/// so a clone held by a `send` in progress never keeps it open by accident.
#[derive(Clone)]
pub(crate) struct SubscriberQueue {
    shared: Arc<Shared>,
}

impl SubscriberQueue {
    /// Queues `frame` if there is room now.
    pub(crate) fn try_push(&self, frame: TopicFrame) -> Result<(), PushError> {
        let cost = frame.encoded_len();
        self.try_push_costing(frame, cost, 0)
    }

    /// Queues heartbeat `frame` if there is room now, counting a few frames
    /// of slack beyond the limits (see `HEARTBEAT_SLACK`).
    pub(crate) fn try_push_heartbeat(&self, frame: TopicFrame) -> Result<(), PushError> {
        let cost = frame.encoded_len();
        self.try_push_costing(frame, cost, HEARTBEAT_SLACK)
    }

    fn try_push_costing(
        &self,
        frame: TopicFrame,
        cost: usize,
        slack: usize,
    ) -> Result<(), PushError> {
        let limits = self.shared.limits;
        let mut state = self.shared.lock();
        if state.closed || state.consumer_gone || state.ending.is_some() {
            return Err(PushError::Gone);
        }
        // Slack frames are heartbeats, a few dozen bytes each: counted in
        // frames, they are allowed past the byte limit by as many kilobytes.
        let fits = state.frames.is_empty()
            || (state.frames.len() < limits.frames + slack
                && state.bytes.saturating_add(cost) <= limits.bytes + slack * 1024);
        if !fits {
            return Err(PushError::Full(frame));
        }
        state.bytes = state.bytes.saturating_add(cost);
        state.frames.push_back((frame, cost));
        Shared::wake_consumer(&mut state);
        Ok(())
    }

    /// Queues `frame`, waiting for room as long as it takes (the caller puts
    /// a deadline on it). Cancel-safe: a dropped wait queues nothing.
    pub(crate) async fn push(&self, mut frame: TopicFrame) -> Result<(), PushError> {
        let cost = frame.encoded_len();
        loop {
            // Registered before looking, so room made between the look and
            // the wait still wakes us.
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_push_costing(frame, cost, 0) {
                Err(PushError::Full(back)) => frame = back,
                done => return done,
            }
            room.await;
        }
    }

    /// No more frames: the stream ends once the subscriber has read the
    /// queued ones.
    pub(crate) fn close(&self) {
        let mut state = self.shared.lock();
        state.closed = true;
        Shared::wake_consumer(&mut state);
        drop(state);
        self.shared.room.notify_waiters();
    }

    /// Gives up on the subscriber: drops the queued frames now and ends the
    /// stream with `status` as soon as the transport polls it.
    pub(crate) fn end_with(&self, status: Status) {
        let mut state = self.shared.lock();
        state.frames.clear();
        state.bytes = 0;
        if !state.closed {
            state.ending = Some(status);
            state.closed = true;
        }
        Shared::wake_consumer(&mut state);
        drop(state);
        self.shared.room.notify_waiters();
    }

    /// Frames and bytes queued now.
    #[cfg(test)]
    fn queued(&self) -> (usize, usize) {
        let state = self.shared.lock();
        (state.frames.len(), state.bytes)
    }
}

/// The subscriber's end: the response stream of its `Subscribe` call.
pub(crate) struct QueueStream {
    shared: Arc<Shared>,
    done: bool,
}

impl Stream for QueueStream {
    type Item = Result<TopicFrame, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut state = self.shared.lock();
        if let Some(status) = state.ending.take() {
            drop(state);
            self.done = true;
            return Poll::Ready(Some(Err(status)));
        }
        if let Some((frame, cost)) = state.frames.pop_front() {
            state.bytes = state.bytes.saturating_sub(cost);
            drop(state);
            self.shared.room.notify_waiters();
            return Poll::Ready(Some(Ok(frame)));
        }
        if state.closed {
            drop(state);
            self.done = true;
            return Poll::Ready(None);
        }
        state.consumer = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for QueueStream {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.consumer_gone = true;
        state.frames.clear();
        state.bytes = 0;
        drop(state);
        self.shared.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;

    use super::*;

    fn data(n: usize) -> TopicFrame {
        TopicFrame {
            header: None,
            payload: vec![7; n],
        }
    }

    const LIMITS: QueueLimits = QueueLimits {
        frames: 3,
        bytes: 1000,
    };

    #[tokio::test]
    async fn a_full_queue_hands_the_frame_back_and_room_lets_a_waiting_push_in() {
        let (queue, mut stream) = subscriber_queue(LIMITS);
        for _ in 0..3 {
            queue.try_push(data(10)).unwrap();
        }
        assert!(matches!(queue.try_push(data(10)), Err(PushError::Full(_))));
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.push(data(11)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "no room yet");
        assert_eq!(stream.next().await.unwrap().unwrap().payload.len(), 10);
        waiting.await.unwrap().unwrap();
        assert_eq!(queue.queued().0, 3);
    }

    #[tokio::test]
    async fn bytes_bound_the_queue_but_an_oversized_frame_goes_alone() {
        let (queue, mut stream) = subscriber_queue(LIMITS);
        queue.try_push(data(600)).unwrap();
        assert!(
            matches!(queue.try_push(data(600)), Err(PushError::Full(_))),
            "1200 bytes > 1000"
        );
        stream.next().await.unwrap().unwrap();
        queue.try_push(data(5000)).unwrap();
        assert!(matches!(queue.try_push(data(1)), Err(PushError::Full(_))));
        stream.next().await.unwrap().unwrap();
        assert_eq!(queue.queued(), (0, 0));
    }

    #[tokio::test]
    async fn a_heartbeat_finds_a_little_room_in_a_full_queue_but_not_forever() {
        let (queue, _stream) = subscriber_queue(LIMITS);
        for _ in 0..3 {
            queue.try_push(data(10)).unwrap();
        }
        for _ in 0..HEARTBEAT_SLACK {
            queue.try_push_heartbeat(data(0)).unwrap();
        }
        assert!(matches!(
            queue.try_push_heartbeat(data(0)),
            Err(PushError::Full(_))
        ));
        assert!(
            matches!(queue.try_push(data(1)), Err(PushError::Full(_))),
            "data gets no slack"
        );
    }

    #[tokio::test]
    async fn ending_drops_the_frames_at_once_and_yields_the_status() {
        let (queue, mut stream) = subscriber_queue(LIMITS);
        queue.try_push(data(100)).unwrap();
        queue.try_push(data(100)).unwrap();
        queue.end_with(Status::resource_exhausted("too slow"));
        assert_eq!(queue.queued(), (0, 0), "memory freed before any poll");
        assert!(matches!(queue.try_push(data(1)), Err(PushError::Gone)));
        let status = stream.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn closing_ends_the_stream_after_the_queued_frames() {
        let (queue, mut stream) = subscriber_queue(LIMITS);
        queue.try_push(data(1)).unwrap();
        queue.close();
        assert!(stream.next().await.unwrap().is_ok());
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_dropped_stream_releases_a_waiting_push() {
        let (queue, stream) = subscriber_queue(LIMITS);
        for _ in 0..3 {
            queue.try_push(data(1)).unwrap();
        }
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.push(data(1)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(stream);
        assert!(matches!(waiting.await.unwrap(), Err(PushError::Gone)));
        assert_eq!(queue.queued(), (0, 0));
    }
}
