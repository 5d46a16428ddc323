//! The local-pause guard: a monitor that was not running cannot judge its
//! peers on the time it lost.
//!
//! A monitor stopped by `SIGSTOP`, a stop-the-world pause, a frozen VM or a
//! starved CPU still has its heartbeats in flight when it wakes, and the
//! replies that came in meanwhile wait unread: every one of those heartbeats
//! looks unanswered, or answered late, through no fault of the peer.
//! Cassandra refuses to convict after a local pause of more than 5 s; this
//! guard does the same for any pause longer than its threshold, for every
//! detector: the heartbeats in flight across the pause are voided (neither
//! an answer nor a miss), each affected peer gets a fresh heartbeat, and
//! only what is observed after the pause counts.
//!
//! How a pause is seen: the driver wakes at least every half threshold while
//! it monitors anyone ([`PauseGuard::next_check`]), and hands every wake-up
//! to [`PauseGuard::observe`]. A wake-up more than half a threshold after
//! the latest one it promised is a pause. Every pause longer than the
//! threshold is caught that way, wherever it falls between two wake-ups; a
//! shorter one may be.

use std::time::{Duration, Instant};

/// The shortest threshold the guard uses: below it, ordinary scheduling
/// noise on a busy machine would read as pauses.
pub const MIN_PAUSE_THRESHOLD: Duration = Duration::from_millis(20);

/// The longest threshold: a pause longer than an hour-long heartbeat
/// period is a pause whatever the setting, and instants stay far from
/// overflow.
pub const MAX_PAUSE_THRESHOLD: Duration = Duration::from_secs(3600);

/// The threshold the guard uses when none is set: half the shortest
/// heartbeat period among the peers, and at least
/// [`MIN_PAUSE_THRESHOLD`]. A pause of half a period can already make a
/// reply that came on time look late (its round trip is measured when it is
/// read).
pub fn default_pause_threshold(shortest_period: Duration) -> Duration {
    (shortest_period / 2).max(MIN_PAUSE_THRESHOLD)
}

/// How the guard picks its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PauseThreshold {
    /// [`default_pause_threshold`] of the shortest period being monitored.
    #[default]
    Auto,
    /// A fixed threshold, kept within [`MIN_PAUSE_THRESHOLD`] and
    /// [`MAX_PAUSE_THRESHOLD`].
    Fixed(Duration),
    /// No guard: every heartbeat counts, pauses or not.
    Off,
}

/// A pause the guard saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    /// When the driver last ran before it (the pause lies within
    /// `since..until`).
    pub since: Instant,
    /// When the driver ran again.
    pub until: Instant,
    /// The threshold it exceeded.
    pub threshold: Duration,
}

impl Pause {
    /// How long the driver did not run, at most.
    pub fn length(&self) -> Duration {
        self.until.saturating_duration_since(self.since)
    }
}

/// Watches the driver's own wake-ups for pauses.
#[derive(Debug, Clone)]
pub struct PauseGuard {
    setting: PauseThreshold,
    /// The latest wake-up observed while monitoring, and the threshold in
    /// force then.
    last: Option<(Instant, Duration)>,
}

impl PauseGuard {
    /// A guard with `setting`.
    pub fn new(setting: PauseThreshold) -> Self {
        Self {
            setting,
            last: None,
        }
    }

    /// The threshold for peers whose shortest period is `shortest_period`
    /// (`None`: no peers, no guard needed); `None` when the guard is off.
    pub fn threshold(&self, shortest_period: Option<Duration>) -> Option<Duration> {
        let shortest = shortest_period?;
        match self.setting {
            PauseThreshold::Auto => {
                Some(default_pause_threshold(shortest).min(MAX_PAUSE_THRESHOLD))
            }
            PauseThreshold::Fixed(t) => Some(t.clamp(MIN_PAUSE_THRESHOLD, MAX_PAUSE_THRESHOLD)),
            PauseThreshold::Off => None,
        }
    }

    /// The latest instant the driver must wake at for a pause to be seen;
    /// `None` while there is nothing to guard.
    pub fn next_check(&self) -> Option<Instant> {
        self.last
            .and_then(|(at, threshold)| at.checked_add(threshold / 2))
    }

    /// The driver woke at `now`, monitoring peers whose shortest period is
    /// `shortest_period` (`None`: no peers). Returns the pause that ended
    /// now, if the driver woke later than it had to by more than half the
    /// threshold.
    pub fn observe(&mut self, now: Instant, shortest_period: Option<Duration>) -> Option<Pause> {
        let threshold = self.threshold(shortest_period);
        let previous = std::mem::replace(&mut self.last, threshold.map(|t| (now, t)));
        let (since, promised_threshold) = previous?;
        // Judged against the threshold the previous wake-up promised to keep:
        // a peer registered meanwhile with a shorter period does not turn an
        // ordinary sleep into a pause.
        let promised = since.checked_add(promised_threshold / 2)?;
        let late = now.saturating_duration_since(promised);
        (late > promised_threshold / 2).then_some(Pause {
            since,
            until: now,
            threshold: promised_threshold,
        })
    }
}

impl Default for PauseGuard {
    fn default() -> Self {
        Self::new(PauseThreshold::Auto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_default_threshold_is_half_the_shortest_period_and_never_below_the_floor() {
        assert_eq!(default_pause_threshold(100 * MS), 50 * MS);
        assert_eq!(default_pause_threshold(10 * MS), MIN_PAUSE_THRESHOLD);
        let guard = PauseGuard::new(PauseThreshold::Fixed(MS));
        assert_eq!(guard.threshold(Some(100 * MS)), Some(MIN_PAUSE_THRESHOLD));
        // A threshold from a config file is bounded both ways: no overflow
        // of an instant, however large.
        let mut huge = PauseGuard::new(PauseThreshold::Fixed(Duration::MAX));
        assert_eq!(huge.threshold(Some(100 * MS)), Some(MAX_PAUSE_THRESHOLD));
        let t0 = Instant::now();
        huge.observe(t0, Some(100 * MS));
        assert!(huge.next_check().is_some());
        assert_eq!(
            huge.observe(t0 + Duration::from_secs(60), Some(100 * MS)),
            None
        );
        assert_eq!(guard.threshold(None), None);
        assert_eq!(
            PauseGuard::new(PauseThreshold::Off).threshold(Some(100 * MS)),
            None
        );
    }

    #[test]
    fn wake_ups_on_time_are_not_pauses() {
        let t0 = Instant::now();
        let mut guard = PauseGuard::default();
        let period = Some(100 * MS);
        assert_eq!(guard.observe(t0, period), None, "the first wake-up");
        assert_eq!(guard.next_check(), Some(t0 + 25 * MS));
        // Up to half a threshold late on the promise is scheduling noise.
        assert_eq!(guard.observe(t0 + 50 * MS, period), None);
        assert_eq!(guard.observe(t0 + 55 * MS, period), None, "woke early");
    }

    #[test]
    fn every_pause_longer_than_the_threshold_is_caught_wherever_it_falls() {
        let period = Some(100 * MS);
        let threshold = 50 * MS;
        for offset in [0, 5, 12, 24] {
            let t0 = Instant::now();
            let mut guard = PauseGuard::default();
            guard.observe(t0, period);
            // The driver went to sleep for its check at t0 + 25 ms, but was
            // frozen from `offset` after t0 for just over the threshold.
            let frozen_at = t0 + offset * MS;
            let woke = frozen_at + threshold + MS;
            let pause = guard.observe(woke.max(t0 + 25 * MS), period);
            let pause = pause.unwrap_or_else(|| panic!("a pause frozen at +{offset} ms"));
            assert_eq!(pause.since, t0);
            assert!(pause.length() > threshold);
        }
    }

    #[test]
    fn a_long_pause_is_reported_with_its_length() {
        let t0 = Instant::now();
        let mut guard = PauseGuard::default();
        guard.observe(t0, Some(100 * MS));
        let pause = guard
            .observe(t0 + Duration::from_secs(5), Some(100 * MS))
            .expect("a 5 s pause");
        assert_eq!(pause.length(), Duration::from_secs(5));
        assert_eq!(pause.threshold, 50 * MS);
    }

    #[test]
    fn with_no_peers_or_the_guard_off_nothing_is_a_pause() {
        let t0 = Instant::now();
        let mut idle = PauseGuard::default();
        idle.observe(t0, None);
        assert_eq!(idle.next_check(), None, "no wake-ups needed");
        assert_eq!(idle.observe(t0 + Duration::from_secs(60), None), None);
        // The first peer arrives after a long idle sleep: not a pause.
        assert_eq!(
            idle.observe(t0 + Duration::from_secs(61), Some(100 * MS)),
            None
        );
        let mut off = PauseGuard::new(PauseThreshold::Off);
        off.observe(t0, Some(100 * MS));
        assert_eq!(
            off.observe(t0 + Duration::from_secs(5), Some(100 * MS)),
            None
        );
    }

    #[test]
    fn a_shorter_period_registered_meanwhile_does_not_make_a_sleep_a_pause() {
        let t0 = Instant::now();
        let mut guard = PauseGuard::default();
        guard.observe(t0, Some(Duration::from_secs(10)));
        // Promised to wake within 2.5 s; woke at 2 s, when a 100 ms peer
        // joined.
        assert_eq!(
            guard.observe(t0 + Duration::from_secs(2), Some(100 * MS)),
            None
        );
        assert_eq!(
            guard.next_check(),
            Some(t0 + Duration::from_secs(2) + 25 * MS)
        );
    }
}
