//! Heartbeat rates: what a peer's period costs its monitor, in heartbeats
//! per second, and the sum over a node's peers that its heartbeat budget
//! bounds.
//!
//! A rate is kept in whole millionths of a heartbeat per second, each
//! peer's share rounded down once, from its period alone. A sum is then
//! exact: adding a peer and removing it again gives back the very same
//! total, whatever happened in between, where floating point would drift
//! with every change. The rounding is below a millionth of a heartbeat per
//! second per peer, in the peer's favour.

use std::fmt;
use std::time::Duration;

/// Millionths of a heartbeat per second in one heartbeat per second.
const MICROS_PER_UNIT: u64 = 1_000_000;

/// Millionths of a heartbeat per second times nanoseconds: a period of one
/// second (1e9 ns) is one heartbeat per second (1e6 millionths).
const MICROS_NANOS: u128 = 1_000_000 * 1_000_000_000;

/// A rate of heartbeats, in millionths of a heartbeat per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HeartbeatRate(u64);

impl HeartbeatRate {
    /// No heartbeats.
    pub const ZERO: Self = Self(0);

    /// The rate of one peer heartbeated every `period`. A zero period,
    /// which no valid registration has, counts as the highest rate, so that
    /// it can never slip under a budget.
    pub fn of_period(period: Duration) -> Self {
        match period.as_nanos() {
            0 => Self(u64::MAX),
            nanos => Self(u64::try_from(MICROS_NANOS / nanos).unwrap_or(u64::MAX)),
        }
    }

    /// `n` heartbeats per second.
    pub fn per_second(n: u64) -> Self {
        Self(n.saturating_mul(MICROS_PER_UNIT))
    }

    /// `n` peers at this rate each.
    pub fn times(self, n: u32) -> Self {
        Self(self.0.saturating_mul(u64::from(n)))
    }

    /// The sum of two rates; saturates rather than wraps, so a sum never
    /// looks smaller than its parts.
    pub fn saturating_add(self, other: Self) -> Self {
        Self(self.0.saturating_add(other.0))
    }

    /// The difference of two rates, zero at least.
    pub fn saturating_sub(self, other: Self) -> Self {
        Self(self.0.saturating_sub(other.0))
    }

    /// The rate in millionths of a heartbeat per second.
    pub fn as_micros(self) -> u64 {
        self.0
    }

    /// The rate in heartbeats per second, for display and metrics.
    pub fn as_per_second_f64(self) -> f64 {
        self.0 as f64 / MICROS_PER_UNIT as f64
    }
}

/// Heartbeats per second, with as many decimals as it takes (at most six):
/// `200`, `333.333333`, `0.000277`.
impl fmt::Display for HeartbeatRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / MICROS_PER_UNIT;
        let fraction = self.0 % MICROS_PER_UNIT;
        if fraction == 0 {
            return write!(f, "{whole}");
        }
        let digits = format!("{fraction:06}");
        write!(f, "{whole}.{}", digits.trim_end_matches('0'))
    }
}

impl std::iter::Sum for HeartbeatRate {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::ZERO, Self::saturating_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_period_costs_its_inverse_in_heartbeats_per_second() {
        assert_eq!(
            HeartbeatRate::of_period(ms(5)),
            HeartbeatRate::per_second(200)
        );
        assert_eq!(
            HeartbeatRate::of_period(ms(1)),
            HeartbeatRate::per_second(1000)
        );
        assert_eq!(
            HeartbeatRate::of_period(ms(1000)),
            HeartbeatRate::per_second(1)
        );
        assert_eq!(HeartbeatRate::of_period(ms(3)).as_micros(), 333_333_333);
        assert_eq!(
            HeartbeatRate::of_period(Duration::from_secs(3600)).as_micros(),
            277
        );
        assert_eq!(
            HeartbeatRate::of_period(Duration::ZERO),
            HeartbeatRate::of_period(Duration::ZERO).saturating_add(HeartbeatRate::per_second(1)),
            "a zero period is the highest rate"
        );
    }

    #[test]
    fn sums_come_back_exactly_whatever_the_order_of_changes() {
        let periods = [ms(3), ms(7), ms(5), Duration::from_secs(3600), ms(3)];
        let total: HeartbeatRate = periods.iter().map(|p| HeartbeatRate::of_period(*p)).sum();
        let mut running = HeartbeatRate::ZERO;
        for p in periods.iter().rev() {
            running = running.saturating_add(HeartbeatRate::of_period(*p));
        }
        assert_eq!(running, total);
        for p in periods {
            running = running.saturating_sub(HeartbeatRate::of_period(p));
        }
        assert_eq!(running, HeartbeatRate::ZERO);
        assert_eq!(
            HeartbeatRate::of_period(ms(3)).times(3),
            [ms(3); 3]
                .iter()
                .map(|p| HeartbeatRate::of_period(*p))
                .sum()
        );
    }

    #[test]
    fn rates_display_in_heartbeats_per_second() {
        assert_eq!(HeartbeatRate::per_second(20_000).to_string(), "20000");
        assert_eq!(HeartbeatRate::of_period(ms(3)).to_string(), "333.333333");
        assert_eq!(HeartbeatRate::of_period(ms(8)).to_string(), "125");
        assert_eq!(HeartbeatRate::of_period(ms(16)).to_string(), "62.5");
        assert_eq!(
            HeartbeatRate::of_period(Duration::from_secs(3600)).to_string(),
            "0.000277"
        );
    }
}
