//! What a setting may be: the [`ValidationError`] every rejected value
//! becomes, and the ranges of intervals and counts that settings of every
//! kind share.
//!
//! A leaf of the crate, and not part of [`crate::config`]: the phi
//! detector's settings ([`crate::phi`]) are checked against these ranges and
//! are themselves part of a peer's registration in [`crate::config`], so
//! with the ranges in `config` the two modules would import each other.
//! `config` re-exports the public items under their old paths.

use std::num::NonZeroU32;
use std::time::Duration;

/// Shortest heartbeat frequency and reply timeout.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// Longest heartbeat frequency and reply timeout. A peer checked less than
/// once an hour is not being monitored in any useful sense.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// Most consecutive misses that may be required before a peer is declared
/// unreachable.
pub const MAX_MISSED_LIMIT: u32 = 1000;

/// A value that cannot be accepted, with the wire field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ValidationError {
    /// The field, as named in the `.proto` (`peer_port`, `peer_host`, ...).
    pub field: &'static str,
    /// What is wrong with it, in words a user can act on.
    pub reason: String,
}

impl ValidationError {
    /// An error for `field`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// Checks a count of misses or checks: 1 to [`MAX_MISSED_LIMIT`].
pub(crate) fn check_count(field: &'static str, n: u32) -> Result<NonZeroU32, ValidationError> {
    if n > MAX_MISSED_LIMIT {
        return Err(ValidationError::new(
            field,
            format!("{n} is more than the limit of {MAX_MISSED_LIMIT}"),
        ));
    }
    NonZeroU32::new(n).ok_or_else(|| ValidationError::new(field, "must be at least 1"))
}

/// Checks an interval: [`MIN_INTERVAL`] to [`MAX_INTERVAL`].
pub(crate) fn check_interval(
    field: &'static str,
    interval: Duration,
) -> Result<(), ValidationError> {
    if interval < MIN_INTERVAL {
        return Err(ValidationError::new(
            field,
            format!("{interval:?}; must be at least 1 ms"),
        ));
    }
    if interval > MAX_INTERVAL {
        return Err(ValidationError::new(
            field,
            format!("{} ms; must be at most 1 hour", interval.as_millis()),
        ));
    }
    Ok(())
}
