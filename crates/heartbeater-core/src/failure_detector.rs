//! The [`FailureDetector`] trait: what a detector is told about a peer's
//! heartbeats, and what it is asked.
//!
//! Kept apart from [`crate::detector`], which builds a detector of whichever
//! kind a peer's settings name, so that each kind (the phi detector in
//! [`crate::phi`]) implements the trait without importing the module that
//! chooses among the kinds.

use std::time::{Duration, Instant};

/// Judges one peer from the outcome of each of its heartbeats.
pub trait FailureDetector: Send + 'static {
    /// A heartbeat was answered validly at `now`, after `rtt`.
    fn on_ack(&mut self, now: Instant, rtt: Duration);

    /// A heartbeat got no valid reply before its timeout (or could not be sent).
    fn on_miss(&mut self, now: Instant);

    /// Whether the peer should now be considered unreachable.
    fn is_suspect(&self, now: Instant) -> bool;

    /// Consecutive heartbeats without a valid reply, for status reports.
    fn missed(&self) -> u32;

    /// Forgets all evidence, as after the peer's registration changed.
    fn reset(&mut self);

    /// The monitor itself was paused until `now` (see [`crate::pause`]):
    /// time that passed without a chance to hear the peer is not evidence.
    /// A time-based detector restarts its clock here; counting detectors
    /// need nothing, as the heartbeats in flight across the pause are voided
    /// before they could count.
    fn on_local_pause(&mut self, _now: Instant) {}

    /// Multiplies the conviction threshold by `factor` (at least 1) while
    /// the monitor's own health is in doubt ([`crate::awareness`]).
    fn set_tolerance(&mut self, _factor: u32) {}
}
