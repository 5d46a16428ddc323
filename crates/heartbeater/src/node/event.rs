//! Peer events as the library publishes them, and the stream that carries them.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use futures_util::Stream;
use heartbeater_core::PeerState;
use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

pub use heartbeater_core::EventKind as PeerEventKind;

/// One change in the liveness or registration of a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEvent {
    /// The peer concerned.
    pub peer_id: String,
    /// What happened.
    pub kind: PeerEventKind,
    /// The peer's state after the event.
    pub state: PeerState,
    /// The peer's epoch after the event, when known.
    pub epoch: Option<u64>,
    /// Wall-clock time the node recorded the event.
    pub timestamp: SystemTime,
}

impl PeerEvent {
    /// The event's name in the CLI's and the JSON output's words
    /// (`Registered`, `PeerUp`, `PeerDown`, `Restarted`, `IdentityMismatch`,
    /// `Deregistered`, `ReachedIndirectly`).
    pub fn kind_name(&self) -> &'static str {
        kind_name(&self.kind)
    }
}

/// See [`PeerEvent::kind_name`].
pub fn kind_name(kind: &PeerEventKind) -> &'static str {
    match kind {
        PeerEventKind::Registered => "Registered",
        PeerEventKind::PeerUp => "PeerUp",
        PeerEventKind::PeerDown => "PeerDown",
        PeerEventKind::Restarted { .. } => "Restarted",
        PeerEventKind::IdentityMismatch { .. } => "IdentityMismatch",
        PeerEventKind::Deregistered => "Deregistered",
        PeerEventKind::ReachedIndirectly { .. } => "ReachedIndirectly",
    }
}

/// The stream returned by `HeartbeatServer::events`: every peer event from
/// the moment of the call, in order.
///
/// Events are buffered per subscriber (4096 of them); a subscriber that falls
/// further behind skips the oldest, and [`EventStream::skipped`] says how many
/// it lost, so a consumer can resynchronise from `peers()`.
#[must_use = "a stream does nothing unless polled"]
pub struct EventStream {
    inner: BroadcastStream<PeerEvent>,
    skipped: Arc<AtomicU64>,
}

impl EventStream {
    pub(crate) fn new(rx: broadcast::Receiver<PeerEvent>) -> Self {
        Self {
            inner: BroadcastStream::new(rx),
            skipped: Arc::default(),
        }
    }

    /// Events lost because this stream was not polled fast enough.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

impl Stream for EventStream {
    type Item = PeerEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PeerEvent>> {
        loop {
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(event))) => return Poll::Ready(Some(event)),
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(n)))) => {
                    self.skipped.fetch_add(n, Ordering::Relaxed);
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
