//! Sans-IO liveness logic of Heartbeater.
//!
//! Nothing here does IO or reads a clock: every method takes the current
//! [`std::time::Instant`] as an argument and returns (or queues) what the
//! caller must do. That makes every timing rule testable to the microsecond
//! and lets one driver task run any number of peers.
//!
//! - [`auth`]: the cluster keyring that authenticates datagrams, and the
//!   sealing of probe ids into unforgeable tokens.
//! - [`awareness`]: the monitor's local health score, which widens every
//!   peer's tolerance while the monitor itself looks sick.
//! - [`datagram`]: the heartbeat datagram's codec and the ping responder.
//! - [`config`]: validated peer registrations and detector settings.
//! - [`detector`]: the seeds' miss counter, and the factories that give each
//!   peer the detector its settings name.
//! - [`failure_detector`]: the [`FailureDetector`] trait every detector meets.
//! - [`identity`]: what a node's identity may be (a UUID or a name), its
//!   canonical spelling, and how an identity from the wire is shown.
//! - [`indirect`]: indirect probes on the wire: a monitor's request that a
//!   helper heartbeat a suspect, and the helper's answer.
//! - [`liveness`]: one peer's state machine (`Unknown`, `Alive`, `Unreachable`).
//! - [`pause`]: the local-pause guard: no verdict on time the monitor lost.
//! - [`phi`]: the phi accrual detector, for links whose timing varies.
//! - [`probe`]: the names of peers and heartbeats, and each peer's window of
//!   heartbeats in flight, against which every reply is checked.
//! - [`rate`]: heartbeat rates, exact to a millionth of a heartbeat per
//!   second, which a node's heartbeat budget adds up.
//! - [`table`]: all peers and the single schedule of their heartbeats.
//! - [`tracker`]: which clients of a topic are connected (seed 001).
//! - [`validation`]: [`ValidationError`] and the ranges of intervals and
//!   counts that every kind of setting is checked against.
#![forbid(unsafe_code)]
// Library code turns every failure that input or the network can cause into
// an error value; tests may unwrap.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod auth;
pub mod awareness;
pub mod config;
pub mod datagram;
pub mod detector;
pub mod failure_detector;
pub mod identity;
pub mod indirect;
pub mod liveness;
pub mod pages;
pub mod pause;
pub mod phi;
pub mod probe;
pub mod rate;
pub mod table;
pub mod tracker;
pub mod validation;

pub use auth::{AuthError, KeyError, KeyId, Keyring, ProbeSealer};
pub use config::{DetectorConfig, DetectorKind, PeerSpec, ValidationError};
pub use detector::{
    AnyDetector, Configured, DetectorFactory, FailureDetector, MissCountDetector, MissCounting,
};
pub use liveness::{Arrival, Change, PeerLiveness, PeerState, Reply, ReplyVerdict};
pub use pages::Pages;
pub use pause::{Pause, PauseGuard, PauseThreshold};
pub use phi::{PhiAccrualDetector, PhiParams};
pub use probe::{Path, Paths, PeerKey, ProbeId, PROBE_WINDOW};
pub use rate::HeartbeatRate;
pub use table::{
    EventKind, Expired, LivenessEvent, PeerStatus, PeerTable, Probe, PublishedStatus, StateCounts,
    StatusChange, Upsert,
};
pub use tracker::{ClientConnectionTracker, ConnectionChange, Tick, TrackerConfig};
