//! Sans-IO liveness logic of Heartbeater.
//!
//! Nothing here does IO or reads a clock: every method takes the current
//! [`std::time::Instant`] as an argument and returns (or queues) what the
//! caller must do. That makes every timing rule testable to the microsecond
//! and lets one driver task run any number of peers.
//!
//! - [`config`]: validated peer registrations and detector settings.
//! - [`detector`]: the [`FailureDetector`] trait and the seeds' miss counter.
//! - [`liveness`]: one peer's state machine (`Unknown`, `Alive`, `Unreachable`).
//! - [`table`]: all peers and the single schedule of their heartbeats.
//! - [`tracker`]: which clients of a topic are connected (seed 001).
#![forbid(unsafe_code)]
// Library code turns every failure that input or the network can cause into
// an error value; tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod detector;
pub mod liveness;
pub mod pages;
pub mod table;
pub mod tracker;

pub use config::{DetectorConfig, PeerSpec, ValidationError};
pub use detector::{FailureDetector, MissCountDetector};
pub use liveness::{Change, PeerLiveness, PeerState, Reply};
pub use pages::Pages;
pub use table::{
    EventKind, LivenessEvent, PeerKey, PeerStatus, PeerTable, Probe, StateCounts, Upsert,
};
pub use tracker::{ClientConnectionTracker, ConnectionChange, Tick, TrackerConfig};
