//! Conversions from the node's domain types to the generated gRPC types.
//!
//! Kept apart from the service so that anything that publishes events or
//! statuses (the service, the CLI, tests) converts them one way, without
//! importing the service.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use heartbeater_core::{PeerState, PeerStatus};

use crate::grpc::proto;
use crate::node::event::{PeerEvent, PeerEventKind};

impl PeerEvent {
    /// The event as `WatchPeers` sends it, reported by node `server_id`.
    pub fn to_proto(&self, server_id: &str) -> proto::PeerEvent {
        event_to_proto(self.clone(), server_id)
    }
}

pub(crate) fn state_to_proto(s: PeerState) -> proto::PeerState {
    match s {
        PeerState::Unknown => proto::PeerState::Unknown,
        PeerState::Alive => proto::PeerState::Alive,
        PeerState::Unreachable => proto::PeerState::Unreachable,
    }
}

/// A peer's status as `ListPeers` sends it: one shape for every reporter
/// (the gRPC API, the CLI's HTTP API).
pub fn status_to_proto(s: PeerStatus) -> proto::PeerStatus {
    proto::PeerStatus {
        peer_id: s.peer_id,
        peer_host: s.host,
        peer_port: u32::from(s.port),
        state: state_to_proto(s.state).into(),
        epoch: s.epoch,
        heartbeats_sent: s.heartbeats_sent,
        heartbeats_acked: s.heartbeats_acked,
        last_rtt_micros: s
            .last_rtt
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        heartbeat_freq_millis: millis(s.detector.heartbeat_freq),
        timeout_millis: millis(s.detector.timeout),
        max_missed: s.detector.max_missed.get(),
        missed: s.missed,
        detector: match s.detector.kind {
            heartbeater_core::DetectorKind::MissCount => proto::Detector::MissCount,
            heartbeater_core::DetectorKind::PhiAccrual(_) => proto::Detector::PhiAccrual,
        }
        .into(),
        rise: s.detector.rise.get(),
        answers_as: s.answers_as,
        reached_indirectly: s.reached_indirectly,
        reached_via: s.reached_via,
    }
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn event_to_proto(e: PeerEvent, server_id: &str) -> proto::PeerEvent {
    let (kind, previous_epoch, observed_id) = match e.kind {
        PeerEventKind::Registered => (proto::PeerEventKind::Registered, None, String::new()),
        PeerEventKind::PeerUp => (proto::PeerEventKind::PeerUp, None, String::new()),
        PeerEventKind::PeerDown => (proto::PeerEventKind::PeerDown, None, String::new()),
        PeerEventKind::Restarted { previous } => (
            proto::PeerEventKind::Restarted,
            Some(previous),
            String::new(),
        ),
        PeerEventKind::IdentityMismatch { observed } => {
            (proto::PeerEventKind::IdentityMismatch, None, observed)
        }
        PeerEventKind::Deregistered => (proto::PeerEventKind::Deregistered, None, String::new()),
        PeerEventKind::ReachedIndirectly { via } => (
            proto::PeerEventKind::ReachedIndirectly,
            None,
            via.unwrap_or_default(),
        ),
    };
    proto::PeerEvent {
        kind: kind.into(),
        peer_id: e.peer_id,
        state: state_to_proto(e.state).into(),
        epoch: e.epoch,
        previous_epoch,
        observed_id,
        timestamp_micros: unix_micros(e.timestamp),
        server_id: server_id.to_owned(),
    }
}

/// Microseconds since the Unix epoch; 0 before it, `i64::MAX` past 292,000 years.
pub(crate) fn unix_micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros()
        .try_into()
        .unwrap_or(i64::MAX)
}
