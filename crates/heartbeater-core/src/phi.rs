//! The phi accrual failure detector (Hayashibara et al., as in Cassandra and
//! Akka): instead of counting silences, it asks how unlikely the current
//! silence is, given the intervals between the peer's past answers.
//!
//! `phi = -log10(P(an interval at least this long))`, with the intervals
//! modelled as a normal distribution of the sample window's mean and
//! standard deviation (at least `min_std_dev`), the mean raised by an
//! `acceptable_pause`. phi 1 means a 10% chance that the peer is still
//! alive, phi 8 one in 10^8. On a steady link the detector convicts about
//! `mean + acceptable_pause + 5.2 x min_std_dev` after the last answer at
//! the default threshold of 8; on a jittery or lossy link the intervals
//! spread, and it waits longer instead of raising false alarms.
//!
//! The window is the last [`SAMPLES`] intervals, with exact running sums
//! (integers: no drift), so an update is O(1) and a peer costs at most 224
//! bytes, allocated only for peers that use this detector.

use std::time::{Duration, Instant};

use crate::failure_detector::FailureDetector;
use crate::validation::{check_interval, ValidationError, MAX_INTERVAL};

/// Intervals kept per peer.
pub const SAMPLES: usize = 32;

/// The default conviction threshold (Cassandra's and Akka's).
pub const DEFAULT_PHI_THRESHOLD: f64 = 8.0;

/// The settings of a phi accrual detector. `Eq` and `Copy` like the rest of
/// a registration: the threshold is kept in hundredths, the durations in
/// microseconds (at most an hour each, which a `u32` holds), so that every
/// registration carrying them is 12 bytes long here instead of 40.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PhiParams {
    threshold_centi: u32,
    acceptable_pause_micros: u32,
    min_std_dev_micros: u32,
}

/// A duration of at most [`MAX_INTERVAL`] in whole microseconds.
fn micros_u32(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

impl PhiParams {
    /// Validates the settings: a threshold from 1 to 64 (hundredths kept),
    /// and a pause and a deviation of at most one hour (the deviation at
    /// least 1 ms).
    pub fn new(
        threshold: f64,
        acceptable_pause: Duration,
        min_std_dev: Duration,
    ) -> Result<Self, ValidationError> {
        if !threshold.is_finite() || !(1.0..=64.0).contains(&threshold) {
            return Err(ValidationError::new(
                "phi_threshold",
                format!("{threshold}; must be from 1 to 64"),
            ));
        }
        if acceptable_pause > MAX_INTERVAL {
            return Err(ValidationError::new(
                "acceptable_pause_millis",
                "must be at most 1 hour",
            ));
        }
        check_interval("min_std_dev_millis", min_std_dev)?;
        Ok(Self {
            threshold_centi: (threshold * 100.0).round() as u32,
            acceptable_pause_micros: micros_u32(acceptable_pause),
            min_std_dev_micros: micros_u32(min_std_dev),
        })
    }

    /// The defaults for a peer heartbeated every `period`: threshold 8, an
    /// acceptable pause of one period, and a least deviation of a quarter
    /// period (at least 1 ms).
    pub fn for_period(period: Duration) -> Self {
        Self {
            threshold_centi: (DEFAULT_PHI_THRESHOLD * 100.0) as u32,
            acceptable_pause_micros: micros_u32(period),
            min_std_dev_micros: micros_u32((period / 4).max(Duration::from_millis(1))),
        }
    }

    /// Added to the mean interval: a pause of this long is no evidence.
    pub fn acceptable_pause(&self) -> Duration {
        Duration::from_micros(u64::from(self.acceptable_pause_micros))
    }

    /// The least standard deviation assumed, so that a perfectly regular
    /// peer is not convicted by one late answer.
    pub fn min_std_dev(&self) -> Duration {
        Duration::from_micros(u64::from(self.min_std_dev_micros))
    }

    /// The conviction threshold.
    pub fn threshold(&self) -> f64 {
        f64::from(self.threshold_centi) / 100.0
    }

    /// How long after its last answer a peer with perfectly regular answers
    /// every `period` is convicted: the silence at which phi reaches the
    /// threshold with the least deviation.
    pub fn steady_conviction_after(&self, period: Duration) -> Duration {
        let z = z_for_phi(self.threshold());
        period + self.acceptable_pause() + self.min_std_dev().mul_f64(z)
    }
}

/// The `y` at which the logistic approximation below reaches `phi`.
fn z_for_phi(phi: f64) -> f64 {
    // Bisection over a monotonic function: 60 steps are exact to f64.
    let (mut lo, mut hi) = (0.0_f64, 40.0_f64);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if phi_of_y(mid) < phi {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// phi for a silence `y` standard deviations past the mean, with the
/// logistic approximation of the normal tail Akka uses (error under 0.01%
/// of the tail, and no overflow for any `y`).
fn phi_of_y(y: f64) -> f64 {
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    if y > 0.0 {
        -(e / (1.0 + e)).log10()
    } else {
        -(1.0 - 1.0 / (1.0 + e)).log10()
    }
}

/// One peer's phi accrual detector.
#[derive(Debug, Clone)]
pub struct PhiAccrualDetector {
    params: PhiParams,
    /// Intervals between answers, in microseconds (each at most an hour).
    samples: [u32; SAMPLES],
    /// How many of `samples` are filled, and where the next one goes.
    len: u8,
    next: u8,
    sum: u64,
    sum_sq: u128,
    /// The latest answer, or the latest instant evidence restarted from (a
    /// local pause, the first miss).
    reference: Option<Instant>,
    missed: u32,
    /// The awareness factor on the threshold; 1 when the monitor is healthy.
    tolerance: u32,
}

impl PhiAccrualDetector {
    /// A detector for a peer heartbeated every `period`, started as if two
    /// intervals of a period plus and minus a quarter had been seen (the
    /// first answers then do not look like wild outliers).
    pub fn new(params: PhiParams, period: Duration) -> Self {
        let mut d = Self {
            params,
            samples: [0; SAMPLES],
            len: 0,
            next: 0,
            sum: 0,
            sum_sq: 0,
            reference: None,
            missed: 0,
            tolerance: 1,
        };
        d.push(period.saturating_sub(period / 4));
        d.push(period + period / 4);
        d
    }

    fn push(&mut self, interval: Duration) {
        let micros = u32::try_from(interval.as_micros()).unwrap_or(u32::MAX);
        let i = usize::from(self.next);
        if usize::from(self.len) == SAMPLES {
            let old = self.samples[i];
            self.sum -= u64::from(old);
            self.sum_sq -= u128::from(old) * u128::from(old);
        } else {
            self.len += 1;
        }
        self.samples[i] = micros;
        self.sum += u64::from(micros);
        self.sum_sq += u128::from(micros) * u128::from(micros);
        self.next = ((i + 1) % SAMPLES) as u8;
    }

    /// Mean and standard deviation of the window, in microseconds.
    fn moments(&self) -> (f64, f64) {
        let n = f64::from(self.len.max(1));
        let mean = self.sum as f64 / n;
        let variance = (self.sum_sq as f64 / n - mean * mean).max(0.0);
        (mean, variance.sqrt())
    }

    /// phi at `now`: 0 before any evidence.
    pub fn phi(&self, now: Instant) -> f64 {
        let Some(reference) = self.reference else {
            return 0.0;
        };
        let elapsed = now.saturating_duration_since(reference).as_micros() as f64;
        let (mean, std) = self.moments();
        let mean = mean + f64::from(self.params.acceptable_pause_micros);
        let std = std.max(f64::from(self.params.min_std_dev_micros));
        phi_of_y((elapsed - mean) / std)
    }

    /// The settings.
    pub fn params(&self) -> &PhiParams {
        &self.params
    }
}

impl FailureDetector for PhiAccrualDetector {
    fn on_ack(&mut self, now: Instant, _rtt: Duration) {
        if let Some(previous) = self.reference {
            self.push(now.saturating_duration_since(previous));
        }
        self.reference = Some(now);
        self.missed = 0;
    }

    fn on_miss(&mut self, now: Instant) {
        self.missed = self.missed.saturating_add(1);
        // A peer that never answered is judged from its first miss.
        self.reference.get_or_insert(now);
    }

    fn is_suspect(&self, now: Instant) -> bool {
        self.phi(now) >= self.params.threshold() * f64::from(self.tolerance)
    }

    fn set_tolerance(&mut self, factor: u32) {
        self.tolerance = factor.max(1);
    }

    fn missed(&self) -> u32 {
        self.missed
    }

    fn reset(&mut self) {
        self.reference = None;
        self.missed = 0;
    }

    fn on_local_pause(&mut self, now: Instant) {
        // The silence is counted again from here; the intervals learned
        // before the pause still describe the peer.
        if self.reference.is_some() {
            self.reference = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn steady(period: Duration, answers: usize) -> (PhiAccrualDetector, Instant) {
        let mut d = PhiAccrualDetector::new(PhiParams::for_period(period), period);
        let mut t = Instant::now();
        for _ in 0..answers {
            t += period;
            d.on_ack(t, MS);
        }
        (d, t)
    }

    #[test]
    fn phi_grows_with_the_silence_and_crosses_the_threshold_where_stated() {
        let period = 100 * MS;
        let (d, last) = steady(period, 40);
        assert!(d.phi(last) < 0.01, "right after an answer");
        assert!(d.phi(last + period) < 1.0, "one period later");
        let after = d.params().steady_conviction_after(period);
        assert!(!d.is_suspect(last + after - 5 * MS));
        assert!(d.is_suspect(last + after + 5 * MS));
        // 100 + 100 + 5.23 x 25 ms.
        assert!((after.as_millis() as i64 - 331).abs() <= 2, "{after:?}");
        let mut previous = 0.0;
        for ms in (0..1000).step_by(10) {
            let phi = d.phi(last + ms * MS);
            assert!(phi >= previous, "monotonic at {ms} ms");
            previous = phi;
        }
    }

    #[test]
    fn a_jittery_peer_is_given_more_time_than_a_steady_one() {
        let period = 100 * MS;
        let (calm, calm_last) = steady(period, 40);
        let mut jittery = PhiAccrualDetector::new(PhiParams::for_period(period), period);
        let mut t = Instant::now();
        for i in 0..40 {
            // Answers 20 to 180 ms apart, around the same 100 ms mean.
            t += Duration::from_millis(20 + (i * 53 % 161));
            jittery.on_ack(t, MS);
        }
        let silence = 330 * MS;
        assert!(calm.phi(calm_last + silence) > jittery.phi(t + silence));
        assert!(!jittery.is_suspect(t + silence));
    }

    #[test]
    fn a_lost_answer_widens_the_window_instead_of_convicting() {
        let period = 100 * MS;
        let mut d = PhiAccrualDetector::new(PhiParams::for_period(period), period);
        let mut t = Instant::now();
        for i in 0..64 {
            // Every tenth answer lost: a 200 ms interval.
            t += if i % 10 == 9 { 2 * period } else { period };
            d.on_ack(t, MS);
        }
        assert!(!d.is_suspect(t + 2 * period), "{}", d.phi(t + 2 * period));
    }

    #[test]
    fn the_window_forgets_old_intervals_exactly() {
        let period = 100 * MS;
        let (mut d, mut t) = steady(period, 100);
        let (mean, std) = d.moments();
        assert!((mean - 100_000.0).abs() < 1.0 && std < 1.0, "{mean} {std}");
        for _ in 0..SAMPLES {
            t += 2 * period;
            d.on_ack(t, MS);
        }
        let (mean, std) = d.moments();
        assert!((mean - 200_000.0).abs() < 1.0 && std < 1.0, "{mean} {std}");
        assert_eq!(usize::from(d.len), SAMPLES);
    }

    #[test]
    fn a_local_pause_restarts_the_silence_but_keeps_what_was_learned() {
        let period = 100 * MS;
        let (mut d, last) = steady(period, 40);
        let woke = last + Duration::from_secs(5);
        assert!(
            d.is_suspect(woke),
            "5 s of silence convicts, without the guard"
        );
        d.on_local_pause(woke);
        assert!(!d.is_suspect(woke));
        assert!(d.is_suspect(woke + d.params().steady_conviction_after(period) + 5 * MS));
    }

    #[test]
    fn a_peer_that_never_answers_is_judged_from_its_first_miss() {
        let period = 100 * MS;
        let mut d = PhiAccrualDetector::new(PhiParams::for_period(period), period);
        let t0 = Instant::now();
        assert!(
            !d.is_suspect(t0 + Duration::from_secs(60)),
            "no evidence at all"
        );
        d.on_miss(t0);
        assert_eq!(d.missed(), 1);
        assert!(d.is_suspect(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn a_peer_costs_what_the_module_says() {
        assert!(std::mem::size_of::<PhiAccrualDetector>() <= 224);
    }

    #[test]
    fn settings_are_validated() {
        assert!(PhiParams::new(8.0, 100 * MS, 25 * MS).is_ok());
        for bad in [0.5, 65.0, f64::NAN, f64::INFINITY] {
            let err = PhiParams::new(bad, 100 * MS, 25 * MS).unwrap_err();
            assert_eq!(err.field, "phi_threshold");
        }
        assert_eq!(
            PhiParams::new(8.0, 100 * MS, Duration::ZERO)
                .unwrap_err()
                .field,
            "min_std_dev_millis"
        );
        assert_eq!(PhiParams::new(12.34, MS, MS).unwrap().threshold(), 12.34);
    }
}
