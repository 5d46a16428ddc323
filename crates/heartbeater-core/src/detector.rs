//! Failure detectors: the judgement of whether a peer is alive, given the
//! fate of its heartbeats.
//!
//! A detector sees only acknowledgements and misses; identities, epochs and
//! late replies are sorted out before it by [`crate::PeerLiveness`]. That keeps
//! detectors small and interchangeable: the seeds' miss counter is the default,
//! and an accrual detector (phi) fits behind the same trait.
//!
//! This module holds the count rule and the factories that give each peer its
//! detector; the trait itself is defined in [`crate::failure_detector`], below
//! every kind of detector, and re-exported here.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use crate::config::{DetectorConfig, DetectorKind};
pub use crate::failure_detector::FailureDetector;
use crate::phi::PhiAccrualDetector;

/// Makes the detector of each peer a [`crate::PeerTable`] monitors, from the
/// peer's registered settings. The table is generic over it, so a detector
/// costs exactly its own size per peer, with no boxing.
pub trait DetectorFactory: Send + 'static {
    /// The detector made.
    type Detector: FailureDetector;

    /// A fresh detector for a peer registered with `config`.
    fn build(&self, config: &DetectorConfig) -> Self::Detector;
}

/// Builds a [`MissCountDetector`] per peer: the seeds' rule, the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MissCounting;

impl DetectorFactory for MissCounting {
    type Detector = MissCountDetector;

    fn build(&self, config: &DetectorConfig) -> MissCountDetector {
        MissCountDetector::new(config.max_missed)
    }
}

/// Builds each peer's detector from its registered [`DetectorKind`]: the
/// count rule in place, phi accrual boxed, so that a table of count-rule
/// peers pays 8 bytes per peer more, not the size of a phi window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Configured;

/// The detector [`Configured`] builds.
#[derive(Debug, Clone)]
pub enum AnyDetector {
    /// The count rule.
    MissCount(MissCountDetector),
    /// Phi accrual.
    PhiAccrual(Box<PhiAccrualDetector>),
}

impl DetectorFactory for Configured {
    type Detector = AnyDetector;

    fn build(&self, config: &DetectorConfig) -> AnyDetector {
        match config.kind {
            DetectorKind::MissCount => {
                AnyDetector::MissCount(MissCountDetector::new(config.max_missed))
            }
            DetectorKind::PhiAccrual(params) => AnyDetector::PhiAccrual(Box::new(
                PhiAccrualDetector::new(params, config.heartbeat_freq),
            )),
        }
    }
}

impl FailureDetector for AnyDetector {
    fn on_ack(&mut self, now: Instant, rtt: Duration) {
        match self {
            Self::MissCount(d) => d.on_ack(now, rtt),
            Self::PhiAccrual(d) => d.on_ack(now, rtt),
        }
    }

    fn on_miss(&mut self, now: Instant) {
        match self {
            Self::MissCount(d) => d.on_miss(now),
            Self::PhiAccrual(d) => d.on_miss(now),
        }
    }

    fn is_suspect(&self, now: Instant) -> bool {
        match self {
            Self::MissCount(d) => d.is_suspect(now),
            Self::PhiAccrual(d) => d.is_suspect(now),
        }
    }

    fn missed(&self) -> u32 {
        match self {
            Self::MissCount(d) => d.missed(),
            Self::PhiAccrual(d) => d.missed(),
        }
    }

    fn reset(&mut self) {
        match self {
            Self::MissCount(d) => d.reset(),
            Self::PhiAccrual(d) => d.reset(),
        }
    }

    fn on_local_pause(&mut self, now: Instant) {
        match self {
            Self::MissCount(d) => d.on_local_pause(now),
            Self::PhiAccrual(d) => d.on_local_pause(now),
        }
    }

    fn set_tolerance(&mut self, factor: u32) {
        match self {
            Self::MissCount(d) => d.set_tolerance(factor),
            Self::PhiAccrual(d) => d.set_tolerance(factor),
        }
    }
}

/// Any closure from settings to a detector is a factory.
impl<D: FailureDetector, F: Fn(&DetectorConfig) -> D + Send + 'static> DetectorFactory for F {
    type Detector = D;

    fn build(&self, config: &DetectorConfig) -> D {
        self(config)
    }
}

/// The seeds' rule: `max_missed` consecutive heartbeats without a valid reply
/// convict a peer; any valid reply clears the count.
///
/// Eight bytes of state, no allocation: monitoring 100,000 peers costs nothing
/// here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissCountDetector {
    max_missed: NonZeroU32,
    missed: u32,
    /// The awareness factor; 1 when the monitor is healthy.
    tolerance: u32,
}

impl MissCountDetector {
    /// A detector that convicts after `max_missed` consecutive misses.
    pub fn new(max_missed: NonZeroU32) -> Self {
        Self {
            max_missed,
            missed: 0,
            tolerance: 1,
        }
    }
}

impl FailureDetector for MissCountDetector {
    fn on_ack(&mut self, _now: Instant, _rtt: Duration) {
        self.missed = 0;
    }

    fn on_miss(&mut self, _now: Instant) {
        self.missed = self.missed.saturating_add(1);
    }

    fn is_suspect(&self, _now: Instant) -> bool {
        self.missed >= self.max_missed.get().saturating_mul(self.tolerance)
    }

    fn missed(&self) -> u32 {
        self.missed
    }

    fn reset(&mut self) {
        self.missed = 0;
    }

    fn set_tolerance(&mut self, factor: u32) {
        self.tolerance = factor.max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convicts_on_the_nth_consecutive_miss_and_an_ack_clears_it() {
        let t = Instant::now();
        let mut d = MissCountDetector::new(NonZeroU32::new(3).unwrap());
        d.on_miss(t);
        d.on_miss(t);
        assert!(!d.is_suspect(t));
        d.on_ack(t, Duration::ZERO);
        assert_eq!(d.missed(), 0);
        d.on_miss(t);
        d.on_miss(t);
        d.on_miss(t);
        assert!(d.is_suspect(t));
        assert_eq!(d.missed(), 3);
    }
}
