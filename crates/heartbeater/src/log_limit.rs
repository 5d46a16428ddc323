//! At most one log line per interval for a kind of refusal, with how many
//! went unlogged: a flood of forged datagrams, bad handshakes or wrong
//! tokens must not become a flood of log lines.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The shortest time between two lines of one kind.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// For one owner (the driver).
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// Whether a line may be written now; if so, how many were suppressed
    /// since the last one.
    pub(crate) fn due(&mut self) -> Option<u64> {
        let t = Instant::now();
        if matches!(self.last, Some(last) if t.duration_since(last) < LOG_INTERVAL) {
            self.suppressed = self.suppressed.saturating_add(1);
            return None;
        }
        self.last = Some(t);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The same, shared by tasks (connections, calls).
#[derive(Debug, Default)]
pub(crate) struct SharedLogLimiter(Mutex<LogLimiter>);

impl SharedLogLimiter {
    /// See [`LogLimiter::due`].
    pub(crate) fn due(&self) -> Option<u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).due()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_of_those_skipped() {
        let limiter = SharedLogLimiter::default();
        assert_eq!(limiter.due(), Some(0));
        assert_eq!(limiter.due(), None);
        assert_eq!(limiter.due(), None);
        let mut inner = limiter.0.into_inner().unwrap();
        inner.last = inner.last.and_then(|t| t.checked_sub(LOG_INTERVAL));
        assert_eq!(inner.due(), Some(2));
    }
}
