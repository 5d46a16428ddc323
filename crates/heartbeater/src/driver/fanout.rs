//! Event fan-out: the driver's events to every subscriber, and the epochs it
//! learns to the task that records them on disk.
//!
//! Subscribers get a bounded broadcast: one that falls behind skips the
//! oldest events and is told how many (see [`crate::EventStream`]). Learned
//! epochs go through a bounded channel; when it is full they wait in a map
//! with at most one entry per peer (only the newest epoch of a peer
//! matters), so nothing here grows with the rate of events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use heartbeater_core::{DetectorFactory, EventKind, PeerTable};
use tokio::sync::{broadcast, mpsc};

use crate::node::event::PeerEvent;

/// Events buffered per subscriber before the slowest starts skipping.
const EVENT_BUFFER: usize = 4096;
/// Epochs queued for the store before they wait in the per-peer map.
const EPOCH_QUEUE: usize = 1024;

/// The epochs the driver learns, by peer, for the task that stores them.
pub(crate) type LearnedEpochs = mpsc::Receiver<(Arc<str>, u64)>;

/// The driver's outlet for events.
pub(crate) struct EventFanout {
    events: broadcast::Sender<PeerEvent>,
    learned_epochs: mpsc::Sender<(Arc<str>, u64)>,
    waiting_epochs: HashMap<Arc<str>, u64>,
}

impl EventFanout {
    /// A fan-out, and the receiving end of the epochs it learns.
    pub(crate) fn new() -> (Self, LearnedEpochs) {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (learned_epochs, rx) = mpsc::channel(EPOCH_QUEUE);
        (
            Self {
                events,
                learned_epochs,
                waiting_epochs: HashMap::new(),
            },
            rx,
        )
    }

    /// A sender to subscribe new receivers from.
    pub(crate) fn events(&self) -> broadcast::Sender<PeerEvent> {
        self.events.clone()
    }

    /// Publishes the events `table` recorded since the last call, in order.
    pub(crate) fn publish<F: DetectorFactory>(
        &mut self,
        table: &mut PeerTable<F>,
        metrics: &crate::node::metrics::Metrics,
    ) {
        let mut timestamp = None;
        // Collected so that each event can be logged with its peer's status;
        // an empty drain allocates nothing.
        let events: Vec<_> = table.drain_events().collect();
        for e in events {
            metrics.transition(&e.kind);
            log_transition(&e, table.status(&e.peer_id).as_ref());
            let at = *timestamp.get_or_insert_with(SystemTime::now);
            if let (EventKind::PeerUp | EventKind::Restarted { .. }, Some(epoch)) =
                (&e.kind, e.epoch)
            {
                self.waiting_epochs.insert(e.peer_id.clone(), epoch);
            }
            // No subscriber is not an error: events are also in `peers()`.
            let _ = self.events.send(PeerEvent {
                peer_id: e.peer_id.to_string(),
                kind: e.kind,
                state: e.state,
                epoch: e.epoch,
                timestamp: at,
            });
        }
        self.flush_epochs();
    }

    fn flush_epochs(&mut self) {
        if self.waiting_epochs.is_empty() {
            return;
        }
        let mut full = false;
        self.waiting_epochs.retain(|peer, epoch| {
            if full {
                return true;
            }
            match self.learned_epochs.try_send((peer.clone(), *epoch)) {
                Ok(()) => false,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    full = true;
                    true
                }
                // The recorder is gone: the node is stopping.
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }
}

/// Logs one liveness event once, with why: the misses against the rule's
/// maximum, the last RTT and the epoch. A peer going down, or answering
/// with another identity, is a warning; the rest is information.
fn log_transition(
    e: &heartbeater_core::LivenessEvent,
    status: Option<&heartbeater_core::PeerStatus>,
) {
    let missed = status.map_or(0, |s| s.missed);
    let max_missed = status.map_or(0, |s| s.detector.max_missed.get());
    // Whole microseconds over 1000: the nearest double to a number with
    // three decimals, which prints as those three decimals (`0.312`), where
    // the product of two floats printed as `0.31157999999999997`.
    let rtt_ms = status
        .and_then(|s| s.last_rtt)
        .map(|d| d.as_micros() as f64 / 1000.0);
    let phi = status.is_some_and(|s| {
        matches!(
            s.detector.kind,
            heartbeater_core::DetectorKind::PhiAccrual(_)
        )
    });
    let epoch = e.epoch;
    let peer = &*e.peer_id;
    match &e.kind {
        EventKind::PeerDown if phi => tracing::warn!(
            target: "heartbeater::transitions", peer, missed, last_rtt_ms = rtt_ms, epoch,
            "peer down: a silence too long for phi accrual ({missed} heartbeats unanswered)"
        ),
        EventKind::PeerDown => tracing::warn!(
            target: "heartbeater::transitions", peer, missed, max_missed, last_rtt_ms = rtt_ms, epoch,
            "peer down: no valid reply to {missed} heartbeats in a row ({max_missed} convict)"
        ),
        // Debug formatting: the observed identity came from the network;
        // quoted and escaped, it cannot pass for other fields of the line.
        EventKind::IdentityMismatch { observed } => tracing::warn!(
            target: "heartbeater::transitions", peer, observed = ?observed, epoch,
            "identity mismatch: another process answers at the peer's address; its replies do not count"
        ),
        EventKind::PeerUp => tracing::info!(
            target: "heartbeater::transitions", peer, last_rtt_ms = rtt_ms, epoch,
            "peer up: a valid reply"
        ),
        EventKind::Restarted { previous } => tracing::info!(
            target: "heartbeater::transitions", peer, previous_epoch = previous, epoch,
            "peer restarted: it answered with a higher epoch"
        ),
        EventKind::Registered => tracing::info!(
            target: "heartbeater::transitions", peer, state = %e.state, "peer registered"
        ),
        EventKind::Deregistered => {
            tracing::info!(target: "heartbeater::transitions", peer, "peer deregistered")
        }
        EventKind::ReachedIndirectly { via } => tracing::warn!(
            target: "heartbeater::transitions", peer, via = via.as_deref().unwrap_or("?"),
            "peer reached only through another node: it is alive, the path between this node \
             and it fails (check the link, routes and firewalls between the two)"
        ),
    }
}
