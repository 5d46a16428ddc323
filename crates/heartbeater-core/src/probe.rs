//! What the core sent: the names of peers and heartbeats, and each peer's
//! window of heartbeats still waiting for an answer.
//!
//! Nothing that comes back over the network is believed unless it names a
//! heartbeat in this window: the window says whether the heartbeat was sent,
//! on which paths, when (by the core's own clock), and whether it already
//! has its outcome. A reply carries only a [`ProbeId`]; the send time, the
//! path and the peer it was meant for are all looked up here.

use std::time::{Duration, Instant};

/// Heartbeats of one peer that can be in flight at once. With
/// `timeout <= 7 x heartbeat_freq` (see [`crate::config::MAX_TIMEOUT_PERIODS`])
/// a table driven as documented never has more: the scheduler spaces a
/// peer's sends at least a period apart, give or take one period of
/// lateness. Should a driver still send more, the oldest is given up as a
/// miss to make room, so the bound holds whatever the caller does.
pub const PROBE_WINDOW: usize = 8;

/// Names one registration of one peer. A re-registration or a removal makes
/// older keys stale, so outcomes of heartbeats sent under an old registration
/// are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey {
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

impl PeerKey {
    /// The key as one number. Any number is a key; one the table never
    /// issued is simply not current, and outcomes for it are ignored.
    pub fn to_bits(self) -> u64 {
        (u64::from(self.slot) << 32) | u64::from(self.generation)
    }

    /// The key [`Self::to_bits`] made.
    pub fn from_bits(bits: u64) -> Self {
        Self {
            slot: (bits >> 32) as u32,
            generation: bits as u32,
        }
    }

    /// A small dense index (the slot) for drivers that keep per-peer state
    /// in a vector. Reused after a removal; compare whole keys to tell
    /// registrations apart.
    pub fn index(self) -> usize {
        self.slot as usize
    }
}

/// Names one heartbeat: the registration it was sent under and its sequence
/// number. Opaque to drivers: they carry it to the wire and back (sealed, see
/// the node's datagram token) and hand it to the table with the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeId {
    pub(crate) key: PeerKey,
    pub(crate) seq: u64,
}

impl ProbeId {
    /// Length of [`Self::to_bytes`].
    pub const LEN: usize = 16;

    /// The peer registration this heartbeat belongs to.
    pub fn peer(self) -> PeerKey {
        self.key
    }

    /// Its sequence number among the peer's heartbeats: later ones are
    /// higher.
    pub fn seq(self) -> u64 {
        self.seq
    }

    /// The id as bytes, for a driver that must carry it through a round trip.
    /// Knowing an id gives nothing: the table accepts an outcome only for a
    /// heartbeat it still waits for, and a driver that puts ids on the wire
    /// must authenticate them (the node seals them with a MAC).
    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&self.key.to_bits().to_be_bytes());
        out[8..].copy_from_slice(&self.seq.to_be_bytes());
        out
    }

    /// The id [`Self::to_bytes`] made. Any 16 bytes are an id; one the table
    /// did not issue, or no longer waits for, is rejected by the table.
    pub fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        let mut key = [0u8; 8];
        let mut seq = [0u8; 8];
        key.copy_from_slice(&bytes[..8]);
        seq.copy_from_slice(&bytes[8..]);
        Self {
            key: PeerKey::from_bits(u64::from_be_bytes(key)),
            seq: u64::from_be_bytes(seq),
        }
    }
}

/// A way a heartbeat travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// A heartbeat datagram over UDP.
    Datagram,
    /// A unary gRPC `Heartbeat` call.
    Grpc,
    /// Other nodes asked to heartbeat the peer on the monitor's behalf
    /// (an indirect probe round, opened before a conviction).
    Indirect,
}

impl Path {
    fn bit(self) -> u8 {
        match self {
            Path::Datagram => DATAGRAM,
            Path::Grpc => GRPC,
            Path::Indirect => INDIRECT,
        }
    }
}

/// The paths one heartbeat was sent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Paths(u8);

impl Paths {
    /// Just `path`.
    pub fn only(path: Path) -> Self {
        Self(path.bit())
    }

    /// Whether the heartbeat went over `path`.
    pub fn contains(self, path: Path) -> bool {
        self.0 & path.bit() != 0
    }

    /// Whether it went over no path at all.
    pub fn is_empty(self) -> bool {
        self.0 & ROUTES == 0
    }
}

const IN_FLIGHT: u8 = 1;
const DATAGRAM: u8 = 2;
const GRPC: u8 = 4;
/// A silence does not count as a miss (a first datagram to a peer that never
/// answered one: it may just not speak UDP).
const TRIAL: u8 = 8;
const INDIRECT: u8 = 16;
/// Every path a heartbeat can take.
const ROUTES: u8 = DATAGRAM | GRPC | INDIRECT;
/// The entry is an indirect probe round: kept apart from the `INDIRECT`
/// path bit, which goes when the round fails to leave (no helper), so that
/// its outcome is still that of a round.
const ROUND: u8 = 32;

/// A heartbeat that left the window, with what it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settled {
    pub(crate) paths: Paths,
    /// Whether its silence counts as a miss.
    pub(crate) counts: bool,
    /// Whether it was an indirect probe round (marked on [`Path::Indirect`]).
    pub(crate) round: bool,
}

/// The heartbeats of one peer still waiting for their outcome, by sequence
/// number: 72 bytes, no allocation.
///
/// Send times are kept as microseconds since the window's first send, which
/// is exact integer arithmetic (no drift however long the peer lives) and
/// needs a `u64` only for the newest: the others are stored as their age
/// relative to it, which fits in a `u32` for 71 minutes, longer than any
/// accepted timeout (an hour). An age that does not fit is saturated, which
/// can only make a reply look later than it was, never earlier.
#[derive(Debug, Clone)]
pub(crate) struct ProbeWindow {
    base: Option<Instant>,
    newest_micros: u64,
    /// Sequence number of the next heartbeat; the window covers the
    /// `PROBE_WINDOW` before it. Starts at 1.
    next_seq: u64,
    ages: [u32; PROBE_WINDOW],
    flags: [u8; PROBE_WINDOW],
}

impl Default for ProbeWindow {
    fn default() -> Self {
        Self {
            base: None,
            newest_micros: 0,
            next_seq: 1,
            ages: [0; PROBE_WINDOW],
            flags: [0; PROBE_WINDOW],
        }
    }
}

impl ProbeWindow {
    /// Records a heartbeat sent at `now`; returns its sequence number and the
    /// heartbeat it displaced, if one was still in flight.
    pub(crate) fn push(&mut self, now: Instant) -> (u64, Option<(u64, Settled)>) {
        let base = *self.base.get_or_insert(now);
        let micros = micros(now.saturating_duration_since(base));
        // `now` never goes back for a driver on a monotonic clock; should it,
        // the send is taken as simultaneous with the newest.
        let shift = micros.saturating_sub(self.newest_micros);
        self.newest_micros = self.newest_micros.max(micros);
        let shift = u32::try_from(shift).unwrap_or(u32::MAX);
        for (age, flags) in self.ages.iter_mut().zip(&self.flags) {
            if flags & IN_FLIGHT != 0 {
                *age = age.saturating_add(shift);
            }
        }
        let seq = self.next_seq;
        self.next_seq = seq.saturating_add(1);
        let i = index(seq);
        let displaced = (self.flags[i] & IN_FLIGHT != 0).then(|| {
            let old = seq.saturating_sub(PROBE_WINDOW as u64);
            (old, settled(self.flags[i]))
        });
        self.ages[i] = 0;
        self.flags[i] = IN_FLIGHT;
        (seq, displaced)
    }

    fn slot(&self, seq: u64) -> Option<usize> {
        let age = self.next_seq.checked_sub(seq)?;
        if age == 0 || age > PROBE_WINDOW as u64 {
            return None;
        }
        let i = index(seq);
        (self.flags[i] & IN_FLIGHT != 0).then_some(i)
    }

    /// Whether heartbeat `seq` is still waiting for its outcome.
    pub(crate) fn in_flight(&self, seq: u64) -> bool {
        self.slot(seq).is_some()
    }

    /// Records that heartbeat `seq` went out over `path`; `trial` says its
    /// silence is not to count. A heartbeat sent on any path without `trial`
    /// counts. Returns false if `seq` is not in flight.
    pub(crate) fn mark(&mut self, seq: u64, path: Path, trial: bool) -> bool {
        let Some(i) = self.slot(seq) else {
            return false;
        };
        let f = &mut self.flags[i];
        let first = *f & ROUTES == 0;
        if path == Path::Indirect {
            *f |= ROUND;
        }
        if trial && first {
            *f |= TRIAL;
        } else if !trial {
            *f &= !TRIAL;
        }
        *f |= path.bit();
        true
    }

    /// The paths heartbeat `seq` went out on, if it is in flight.
    pub(crate) fn paths(&self, seq: u64) -> Option<Paths> {
        self.slot(seq).map(|i| Paths(self.flags[i] & ROUTES))
    }

    /// Forgets that `seq` went over `path`; returns the paths left, or
    /// `None` if it is not in flight.
    pub(crate) fn unmark(&mut self, seq: u64, path: Path) -> Option<Paths> {
        let i = self.slot(seq)?;
        self.flags[i] &= !path.bit();
        Some(Paths(self.flags[i] & ROUTES))
    }

    /// How long ago, at `now`, heartbeat `seq` was sent.
    pub(crate) fn age(&self, seq: u64, now: Instant) -> Option<Duration> {
        let i = self.slot(seq)?;
        let base = self.base?;
        let newest = Duration::from_micros(self.newest_micros);
        let since_newest = now.saturating_duration_since(base).saturating_sub(newest);
        Some(since_newest.saturating_add(Duration::from_micros(u64::from(self.ages[i]))))
    }

    /// Gives heartbeat `seq` its outcome; `None` if it already had one (or
    /// was never sent, or left the window).
    pub(crate) fn settle(&mut self, seq: u64) -> Option<Settled> {
        let i = self.slot(seq)?;
        let s = settled(self.flags[i]);
        self.flags[i] = 0;
        Some(s)
    }

    /// Drops every heartbeat in flight without an outcome, as when the
    /// registration they were sent under is replaced.
    pub(crate) fn clear(&mut self) {
        self.flags = [0; PROBE_WINDOW];
    }

    /// The sequence number the next heartbeat will get.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether an indirect probe round is in flight.
    pub(crate) fn round_in_flight(&self) -> bool {
        self.flags
            .iter()
            .any(|f| f & (IN_FLIGHT | ROUND) == IN_FLIGHT | ROUND)
    }

    /// How many heartbeats are in flight.
    pub(crate) fn len(&self) -> usize {
        self.flags.iter().filter(|f| *f & IN_FLIGHT != 0).count()
    }
}

fn settled(flags: u8) -> Settled {
    Settled {
        paths: Paths(flags & ROUTES),
        counts: flags & TRIAL == 0,
        round: flags & ROUND != 0,
    }
}

fn index(seq: u64) -> usize {
    (seq % PROBE_WINDOW as u64) as usize
}

/// A duration in whole microseconds, saturating (no timer is that far).
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_costs_72_bytes_per_peer() {
        // The per-peer price of owning every probe (docs/BENCHMARKS.md).
        assert!(std::mem::size_of::<ProbeWindow>() <= 72);
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ids_round_trip_through_bytes() {
        let id = ProbeId {
            key: PeerKey {
                slot: 7,
                generation: 9,
            },
            seq: u64::MAX,
        };
        assert_eq!(ProbeId::from_bytes(id.to_bytes()), id);
    }

    #[test]
    fn ages_are_measured_with_the_windows_own_clock() {
        let t0 = Instant::now();
        let mut w = ProbeWindow::default();
        let (a, _) = w.push(t0);
        let (b, _) = w.push(t0 + ms(100));
        let (c, _) = w.push(t0 + ms(250));
        assert_eq!(w.age(a, t0 + ms(300)), Some(ms(300)));
        assert_eq!(w.age(b, t0 + ms(300)), Some(ms(200)));
        assert_eq!(w.age(c, t0 + ms(300)), Some(ms(50)));
        assert_eq!(w.len(), 3);
    }

    #[test]
    fn a_probe_settles_once_and_unknown_numbers_never() {
        let t0 = Instant::now();
        let mut w = ProbeWindow::default();
        let (s, _) = w.push(t0);
        assert!(w.settle(0).is_none());
        assert!(w.settle(s + 1).is_none());
        assert!(w.settle(u64::MAX).is_none());
        assert!(w.settle(s).is_some());
        assert!(w.settle(s).is_none());
        assert!(!w.in_flight(s));
    }

    #[test]
    fn the_oldest_probe_is_displaced_when_the_window_is_full() {
        let t0 = Instant::now();
        let mut w = ProbeWindow::default();
        let (first, _) = w.push(t0);
        w.mark(first, Path::Datagram, false);
        for i in 1..PROBE_WINDOW as u64 {
            assert_eq!(w.push(t0 + ms(i)).1, None);
        }
        let (_, displaced) = w.push(t0 + ms(100));
        assert_eq!(
            displaced,
            Some((
                first,
                Settled {
                    paths: Paths(DATAGRAM),
                    counts: true,
                    round: false,
                }
            ))
        );
        assert!(!w.in_flight(first));
        assert_eq!(w.len(), PROBE_WINDOW);
    }

    #[test]
    fn a_trial_stays_a_trial_only_while_no_counting_path_carries_it() {
        let t0 = Instant::now();
        let mut w = ProbeWindow::default();
        let (s, _) = w.push(t0);
        assert!(w.mark(s, Path::Datagram, true));
        assert!(!settled(w.flags[index(s)]).counts);
        assert!(w.mark(s, Path::Grpc, false));
        assert_eq!(
            w.unmark(s, Path::Grpc).map(|p| p.contains(Path::Datagram)),
            Some(true)
        );
        let settled = w.settle(s).unwrap();
        assert!(settled.counts);
        assert!(
            !w.mark(s, Path::Grpc, false),
            "settled probes take no marks"
        );
    }

    #[test]
    fn ages_beyond_a_u32_saturate_and_only_ever_look_older() {
        let t0 = Instant::now();
        let mut w = ProbeWindow::default();
        let (old, _) = w.push(t0);
        let later = t0 + Duration::from_secs(5 * 3600);
        w.push(later);
        let age = w.age(old, later).unwrap();
        assert!(age >= Duration::from_micros(u64::from(u32::MAX)));
        assert!(age <= Duration::from_secs(5 * 3600));
    }
}
