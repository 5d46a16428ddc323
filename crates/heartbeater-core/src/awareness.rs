//! Local health awareness (Lifeguard's idea, adapted): a monitor that sees
//! half its peers go silent at once, or that was itself paused, is more
//! likely in trouble than all those peers are. Instead of convicting
//! everyone, it widens its tolerance for a while.
//!
//! The score goes from 0 (healthy) to [`MAX_AWARENESS`]. Each peer's
//! conviction threshold is multiplied by `1 + score`: `max_missed` misses
//! for the count rule, the phi threshold for phi accrual. The score rises
//! by one per observation window (the shortest heartbeat period) in which
//! at least half the peers (and at least [`MIN_PEERS`]) had a heartbeat go
//! unanswered. It falls by one after [`DECAY_WINDOWS`] windows without
//! such a rise. Outright pauses of the monitor are the pause guard's
//! ([`crate::pause`]): it voids the evidence of the pause instead, and keeps
//! the bound from the end of the pause.
//!
//! The cost: while the score is `s`, a peer that really died is detected
//! up to `1 + s` times later (at most four times the bound). That is the
//! trade Lifeguard makes, bounded.

use std::time::{Duration, Instant};

/// The highest score: tolerance at most four times the normal.
pub const MAX_AWARENESS: u8 = 3;

/// Fewer peers than this never count as "half the peers at once": with
/// two peers, one dead peer would be half.
pub const MIN_PEERS: usize = 4;

/// Healthy windows after which the score falls by one.
pub const DECAY_WINDOWS: u32 = 10;

/// The monitor's local health score.
#[derive(Debug, Clone, Default)]
pub struct Awareness {
    score: u8,
    window_start: Option<Instant>,
    /// The peers silent in the current window, each counted once: one dead
    /// peer whose heartbeats expire twice in a window is still one peer.
    /// At most one entry per monitored peer; cleared (capacity kept) at
    /// each new window.
    window_peers: std::collections::HashSet<u64>,
    raised_in_window: bool,
    /// When the score last moved (up or down), for the decay.
    last_change: Option<Instant>,
}

impl Awareness {
    /// The score, 0 to [`MAX_AWARENESS`].
    pub fn score(&self) -> u8 {
        self.score
    }

    /// The factor every conviction threshold is multiplied by.
    pub fn tolerance(&self) -> u32 {
        1 + u32::from(self.score)
    }

    fn raise(&mut self, now: Instant) -> bool {
        self.last_change = Some(now);
        if self.score < MAX_AWARENESS {
            self.score += 1;
            true
        } else {
            false
        }
    }

    /// A heartbeat of `peer` (any stable per-peer number) is about to be
    /// settled unanswered at `now`, with `peers` monitored and windows of
    /// `window`. Returns whether the score rose.
    pub fn on_silence(&mut self, now: Instant, peer: u64, peers: usize, window: Duration) -> bool {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < window => {}
            _ => {
                self.window_start = Some(now);
                self.window_peers.clear();
                self.raised_in_window = false;
            }
        }
        self.window_peers.insert(peer);
        let mass = peers >= MIN_PEERS && self.window_peers.len() * 2 >= peers;
        if mass && !self.raised_in_window {
            self.raised_in_window = true;
            return self.raise(now);
        }
        false
    }

    /// Lets the score fall after [`DECAY_WINDOWS`] quiet windows of
    /// `window`. Returns whether it fell.
    pub fn tick(&mut self, now: Instant, window: Duration) -> bool {
        if self.score == 0 {
            return false;
        }
        let quiet = window * DECAY_WINDOWS;
        match self.last_change {
            Some(at) if now.saturating_duration_since(at) < quiet => false,
            _ => {
                self.score -= 1;
                self.last_change = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const WINDOW: Duration = Duration::from_millis(100);

    #[test]
    fn half_the_peers_silent_in_one_window_raises_the_score_once() {
        let t0 = Instant::now();
        let mut a = Awareness::default();
        for i in 0..4 {
            assert!(
                !a.on_silence(t0 + i * MS, i.into(), 10, WINDOW),
                "{} of 10",
                i + 1
            );
        }
        assert!(a.on_silence(t0 + 4 * MS, 4, 10, WINDOW), "5 of 10");
        assert_eq!((a.score(), a.tolerance()), (1, 2));
        for i in 5..10 {
            assert!(
                !a.on_silence(t0 + i * MS, i.into(), 10, WINDOW),
                "once per window"
            );
        }
        // The next window, the same again: one more.
        for i in 0..5 {
            a.on_silence(t0 + WINDOW + i * MS, i.into(), 10, WINDOW);
        }
        assert_eq!(a.score(), 2);
    }

    #[test]
    fn scattered_silences_and_small_tables_raise_nothing() {
        let t0 = Instant::now();
        let mut a = Awareness::default();
        // One silence per window: a lossy link, not a sick monitor.
        for w in 0..50u32 {
            a.on_silence(t0 + WINDOW * w, w.into(), 10, WINDOW);
        }
        assert_eq!(a.score(), 0);
        // Two of three peers silent: too few peers to tell.
        a.on_silence(t0, 1, 3, WINDOW);
        a.on_silence(t0, 2, 3, WINDOW);
        assert_eq!(a.score(), 0);
        // One peer of four silent many times in one window (a dead peer,
        // heartbeated again at once after each miss): still one peer.
        for i in 0..10u32 {
            a.on_silence(t0 + WINDOW * 60 + i * MS, 7, 4, WINDOW);
        }
        assert_eq!(a.score(), 0);
    }

    #[test]
    fn the_score_is_bounded_and_decays_when_quiet() {
        let t0 = Instant::now();
        let mut a = Awareness::default();
        for w in 0..10u32 {
            for i in 0..5u32 {
                a.on_silence(t0 + WINDOW * w + i * MS, i.into(), 10, WINDOW);
            }
        }
        assert_eq!((a.score(), a.tolerance()), (MAX_AWARENESS, 4));
        // The last raise (refreshing the maximum): the fifth silence of window 9.
        let last = t0 + WINDOW * 9 + 4 * MS;
        assert!(!a.tick(last + WINDOW * 9, WINDOW), "not quiet long enough");
        assert!(a.tick(last + WINDOW * 10, WINDOW));
        assert_eq!(a.score(), 2);
        assert!(
            !a.tick(last + WINDOW * 11, WINDOW),
            "paced: one step per 10 windows"
        );
        assert!(a.tick(last + WINDOW * 20, WINDOW));
        assert!(a.tick(last + WINDOW * 30, WINDOW));
        assert_eq!(a.score(), 0);
        assert!(!a.tick(last + WINDOW * 100, WINDOW));
    }
}
