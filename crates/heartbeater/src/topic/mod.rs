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
//! - no callback starts after `deactivate_heartbeats` returns (late answers
//!   are ignored, queued callbacks are dropped; one already running finishes,
//!   and `deactivate_heartbeats_and_wait` waits for it); deactivation itself
//!   reports no disconnections, as in the original;
//! - activating again starts from scratch: no client is known, and answers to
//!   requests of the earlier activation are discarded;
//! - every transition is reported exactly once;
//! - listener callbacks run on a blocking thread, one at a time and in
//!   order, so a slow listener never delays the heartbeat timer; stopping
//!   never waits for a callback;
//! - a heartbeat is answered only after every message that arrived before it
//!   was handled, so an answered heartbeat proves delivery, not just a live
//!   connection;
//! - a subscriber that stops reading cannot stall the others: it is dropped
//!   after the publisher's stall timeout and reported disconnected.

mod activation;
mod grpc;
mod hub;
mod queue;
mod recent;
mod subscriber;
mod types;

pub(crate) use grpc::TopicGrpc;
pub(crate) use hub::Topics;
pub use hub::{
    TopicPublisher, TopicResponse, TopicStats, DEFAULT_STALL_TIMEOUT, MAX_NODE_SUBSCRIPTIONS,
    MAX_SUBSCRIPTIONS,
};
pub(crate) use subscriber::subscribe;
pub use subscriber::{SubscriptionState, TopicSubscriber};
pub use types::{
    validate_topic, ClientConnectionListener, HeartbeatParameters, HeartbeatParametersBuilder,
    TopicError, TopicHandler, MAX_TOPIC_BYTES,
};
