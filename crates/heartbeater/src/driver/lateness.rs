//! How late the scheduler sends heartbeats, against their schedule.
//!
//! Lateness is what a monitor's own stall or overload looks like from the
//! inside; it is what the benchmark's jitter figure reads, and what a
//! local-pause guard will watch. The histogram is lock-free (one atomic add
//! per heartbeat) with buckets growing by 25%, so quantiles are within 25%.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS: usize = 96;
const GROWTH: f64 = 1.25;

/// Lateness of every heartbeat sent since the node started.
pub(crate) struct LatenessHistogram {
    counts: [AtomicU64; BUCKETS],
    max_micros: AtomicU64,
    sum_micros: AtomicU64,
}

fn bucket_of(micros: u64) -> usize {
    if micros == 0 {
        return 0;
    }
    let i = ((micros as f64).ln() / GROWTH.ln()).floor() as usize + 1;
    i.min(BUCKETS - 1)
}

/// Upper bound of bucket `i`, in microseconds.
fn upper_micros(i: usize) -> u64 {
    if i == 0 {
        0
    } else {
        GROWTH.powi(i as i32).ceil() as u64
    }
}

impl Default for LatenessHistogram {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            max_micros: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl LatenessHistogram {
    pub(crate) fn record(&self, lateness: Duration) {
        let micros = u64::try_from(lateness.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        self.max_micros.fetch_max(micros, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> LatenessSnapshot {
        LatenessSnapshot {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            max_micros: self.max_micros.load(Ordering::Relaxed),
            sum_micros: self.sum_micros.load(Ordering::Relaxed),
        }
    }
}

/// A copy of the lateness histogram at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatenessSnapshot {
    counts: Vec<u64>,
    max_micros: u64,
    sum_micros: u64,
}

impl LatenessSnapshot {
    /// Heartbeats counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// What was recorded after `earlier` (a snapshot of the same node).
    /// The maximum is not windowed: it stays the all-time maximum.
    pub fn since(&self, earlier: &LatenessSnapshot) -> LatenessSnapshot {
        LatenessSnapshot {
            counts: self
                .counts
                .iter()
                .zip(earlier.counts.iter().chain(std::iter::repeat(&0)))
                .map(|(now, then)| now.saturating_sub(*then))
                .collect(),
            max_micros: self.max_micros,
            sum_micros: self.sum_micros.saturating_sub(earlier.sum_micros),
        }
    }

    /// The same counts under coarser bounds (in seconds, increasing), for an
    /// exporter. A fine bucket counts under the first bound at or above its
    /// own upper bound, so a count is never reported below its value; it may
    /// be reported up to one fine bucket (25%) above it.
    pub fn histogram(&self, bounds: &[f64]) -> crate::node::metrics::HistogramSnapshot {
        let mut buckets: Vec<(f64, u64)> = bounds.iter().map(|&b| (b, 0)).collect();
        for (i, &n) in self.counts.iter().enumerate() {
            let upper = upper_micros(i) as f64 / 1e6;
            let first = bounds.partition_point(|&b| b < upper);
            for bucket in buckets.iter_mut().skip(first) {
                bucket.1 = bucket.1.saturating_add(n);
            }
        }
        crate::node::metrics::HistogramSnapshot {
            buckets,
            count: self.count(),
            // Divided, not multiplied by 1e-6: see `metrics::Histogram`.
            sum: self.sum_micros as f64 / 1e6,
        }
    }

    /// The `q` quantile (0.0 to 1.0), rounded up to its bucket's bound
    /// (at most 25% over); zero when nothing was counted.
    pub fn quantile(&self, q: f64) -> Duration {
        let total = self.count();
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                // Never above the maximum actually seen.
                return Duration::from_micros(upper_micros(i).min(self.max_micros));
            }
        }
        Duration::from_micros(self.max_micros)
    }

    /// The largest lateness recorded since the node started.
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_bucket_of_the_truth() {
        let h = LatenessHistogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 1000);
        let p50 = s.quantile(0.5).as_micros() as f64;
        let p99 = s.quantile(0.99).as_micros() as f64;
        assert!((500.0..=625.0).contains(&p50), "{p50}");
        assert!((990.0..=1000.0 * 1.25).contains(&p99), "{p99}");
        assert_eq!(s.max(), Duration::from_micros(1000));
    }

    #[test]
    fn coarse_buckets_never_count_a_value_below_itself() {
        let h = LatenessHistogram::default();
        for us in [0, 90, 1_000, 40_000] {
            h.record(Duration::from_micros(us));
        }
        let s = h.snapshot().histogram(&[0.0001, 0.001, 0.01, 0.1]);
        // 90 µs and 1 ms sit in fine buckets reaching past 100 µs and 1 ms
        // (to 109 µs and 1,010 µs), so each counts from the next bound up.
        assert_eq!(
            s.buckets,
            vec![(0.0001, 1), (0.001, 2), (0.01, 3), (0.1, 4)]
        );
        assert_eq!(s.count, 4);
        assert!((s.sum - 0.04109).abs() < 1e-9, "{}", s.sum);
    }

    #[test]
    fn since_counts_only_what_came_after() {
        let h = LatenessHistogram::default();
        h.record(Duration::from_millis(50));
        let before = h.snapshot();
        for _ in 0..10 {
            h.record(Duration::ZERO);
        }
        let window = h.snapshot().since(&before);
        assert_eq!(window.count(), 10);
        assert_eq!(window.quantile(0.99), Duration::ZERO);
        assert_eq!(
            LatenessHistogram::default().snapshot().quantile(0.99),
            Duration::ZERO
        );
    }
}
