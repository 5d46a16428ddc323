//! The public vocabulary of topics: the callbacks a user implements, the
//! heartbeat parameters, topic names and errors. A leaf module: the rest of
//! `topic` builds on it, it builds on nothing of theirs.

use std::time::Duration;

use heartbeater_core::{TrackerConfig, ValidationError};
use uuid::Uuid;

/// Longest topic name, in bytes.
pub const MAX_TOPIC_BYTES: usize = 256;

/// Hears which clients of a topic are connected. Callbacks run on the
/// runtime's blocking threads (never on a thread that drives the heartbeats),
/// one at a time, in the order the transitions happened; they may block, at
/// the price of delaying the callbacks after them.
pub trait ClientConnectionListener: Send + Sync + 'static {
    /// `client_instance_id` answered a heartbeat: it receives the topic's messages.
    fn on_client_connected(&self, topic: &str, client_instance_id: Uuid);
    /// `client_instance_id` left `max_client_conn_checks` heartbeats
    /// unanswered, or its stream was dropped because it stopped reading (see
    /// [`crate::TopicPublisher::set_stall_timeout`]).
    fn on_client_disconnected(&self, topic: &str, client_instance_id: Uuid);
}

/// Receives a subscription's messages and requests. Heartbeats never reach
/// it: the library answers them, each once every message that arrived before
/// it has been handled, so an answered heartbeat proves delivery.
///
/// Calls run on the runtime's blocking threads, one at a time, in the order
/// the frames arrived. The frames waiting for the handler are bounded: a
/// handler slower than the publisher stops the subscription reading its
/// stream, which pushes back on the publisher (whose `send` then waits, up to
/// its stall timeout, after which it drops this subscription, which then
/// subscribes again). A handler may block, but while it does, heartbeats go
/// unanswered.
pub trait TopicHandler: Send + Sync + 'static {
    /// One message of the topic.
    fn on_message(&self, topic: &str, payload: &[u8]);

    /// A request of the publisher; `Some` sends a response back. By default,
    /// requests are not answered.
    fn on_request(&self, topic: &str, payload: &[u8]) -> Option<Vec<u8>> {
        let _ = (topic, payload);
        None
    }
}

impl<F> TopicHandler for F
where
    F: Fn(&str, &[u8]) + Send + Sync + 'static,
{
    fn on_message(&self, topic: &str, payload: &[u8]) {
        self(topic, payload);
    }
}

/// Why a topic operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic name is empty, too long or has control characters.
    #[error("invalid topic: {0}")]
    InvalidTopic(ValidationError),
    /// A heartbeat parameter is out of range.
    #[error("invalid heartbeat parameters: {0}")]
    InvalidParameters(ValidationError),
    /// The stall timeout given to `set_stall_timeout` is out of range; the
    /// one in force is unchanged.
    #[error("invalid stall timeout: {0}")]
    InvalidStallTimeout(ValidationError),
    /// This node already has a publisher for the topic.
    #[error("this node already publishes topic {0:?}")]
    PublisherExists(String),
    /// `activate_heartbeats` while they are active: deactivate first.
    #[error("heartbeats are already active on topic {0:?}; deactivate them first")]
    HeartbeatsAlreadyActive(String),
    /// Called outside a tokio runtime (use the node's runtime).
    #[error("must be called within a tokio runtime")]
    NoRuntime,
}

/// Timing of a publisher's heartbeats; the seed's `HeartbeatParameters`.
///
/// Defaults: rate 1000 ms, timeout 1000 ms, 3 checks, so a silent client is
/// reported disconnected about 3 s after its last answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeartbeatParameters {
    pub(crate) config: TrackerConfig,
}

impl HeartbeatParameters {
    /// A builder with the defaults.
    pub fn builder() -> HeartbeatParametersBuilder {
        HeartbeatParametersBuilder::default()
    }

    /// Time between two heartbeat requests (and checks).
    pub fn heartbeat_rate(&self) -> Duration {
        self.config.heartbeat_rate
    }

    /// How long a heartbeat response is accepted after its request.
    pub fn heartbeat_timeout(&self) -> Duration {
        self.config.heartbeat_timeout
    }

    /// Unanswered checks that make a client disconnected.
    pub fn max_client_conn_checks(&self) -> u32 {
        self.config.max_client_conn_checks.get()
    }

    /// The longest a client that stops answering goes unreported:
    /// `max_client_conn_checks x heartbeat_rate` after its last answer, which
    /// itself came at most `heartbeat_timeout` before it stopped.
    pub fn detection_bound(&self) -> Duration {
        self.config.heartbeat_rate * self.config.max_client_conn_checks.get()
            + self.config.heartbeat_timeout
    }
}

/// Builds [`HeartbeatParameters`]; `build` validates.
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct HeartbeatParametersBuilder {
    rate: Duration,
    timeout: Duration,
    checks: u32,
}

impl Default for HeartbeatParametersBuilder {
    fn default() -> Self {
        let d = TrackerConfig::default();
        Self {
            rate: d.heartbeat_rate,
            timeout: d.heartbeat_timeout,
            checks: d.max_client_conn_checks.get(),
        }
    }
}

impl HeartbeatParametersBuilder {
    /// Time between heartbeats and checks (1 ms to 1 hour). Default 1000 ms.
    pub fn heartbeat_rate(mut self, rate: Duration) -> Self {
        self.rate = rate;
        self
    }

    /// How long a response counts after its request (1 ms to 1 hour). Default 1000 ms.
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Unanswered checks before a client is disconnected (1 to 1000). Default 3.
    pub fn max_client_conn_checks(mut self, checks: u32) -> Self {
        self.checks = checks;
        self
    }

    /// Validates.
    pub fn build(self) -> Result<HeartbeatParameters, TopicError> {
        TrackerConfig::new(self.rate, self.timeout, self.checks)
            .map(|config| HeartbeatParameters { config })
            .map_err(TopicError::InvalidParameters)
    }
}

/// Checks a topic name: 1 to 256 bytes, no control characters.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    let bad = |why: &str| TopicError::InvalidTopic(ValidationError::new("topic", why.to_owned()));
    if topic.is_empty() {
        return Err(bad("must not be empty"));
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(bad("must be at most 256 bytes"));
    }
    if topic.chars().any(char::is_control) {
        return Err(bad("must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_default_to_the_seed_and_reject_nonsense() {
        let p = HeartbeatParameters::builder().build().unwrap();
        assert_eq!(
            (
                p.heartbeat_rate(),
                p.heartbeat_timeout(),
                p.max_client_conn_checks()
            ),
            (Duration::from_millis(1000), Duration::from_millis(1000), 3)
        );
        assert!(HeartbeatParameters::builder()
            .heartbeat_rate(Duration::ZERO)
            .build()
            .is_err());
        assert!(HeartbeatParameters::builder()
            .max_client_conn_checks(0)
            .build()
            .is_err());
        assert!(HeartbeatParameters::builder()
            .heartbeat_timeout(Duration::from_secs(86_400))
            .build()
            .is_err());
    }

    #[test]
    fn topic_names_are_validated() {
        assert!(validate_topic("utopic1").is_ok());
        assert!(validate_topic("").is_err());
        assert!(validate_topic(&"t".repeat(257)).is_err());
        assert!(validate_topic("a\u{0}b").is_err());
    }
}
