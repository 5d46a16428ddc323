//! Topics with heartbeats on the message path (seed 001).
//!
//! A publisher ([`TopicPublisher`]) lives on a node; subscribers on other
//! nodes (or the same one) open one stream per subscription to it. Messages,
//! requests and heartbeats travel the same stream, so a subscriber that
//! answers heartbeats is one that receives messages. With heartbeats active,
//! a [`ClientConnectionListener`] hears `connected` and `disconnected` per
//! client instance id (the subscribing node's identity).
//!
//! Differences from the original, on purpose:
//! - nothing is reported after `deactivate_heartbeats` returns (late answers
//!   are ignored, queued callbacks are dropped); deactivation itself reports
//!   no disconnections, as in the original;
//! - activating again starts from scratch: no client is known, and answers to
//!   requests of the earlier activation are discarded;
//! - every transition is reported exactly once;
//! - listener callbacks run on a thread of their own, in order, so a slow
//!   listener never delays the heartbeat timer.

mod activation;
mod grpc;
mod hub;
mod subscriber;
mod types;

pub(crate) use grpc::TopicGrpc;
pub(crate) use hub::Topics;
pub use hub::{TopicPublisher, TopicResponse};
pub(crate) use subscriber::subscribe;
pub use subscriber::TopicSubscriber;
pub use types::{
    validate_topic, ClientConnectionListener, HeartbeatParameters, HeartbeatParametersBuilder,
    TopicError, TopicHandler, MAX_TOPIC_BYTES,
};
