//! The local-pause guard, on a table driven by an injected clock: a monitor
//! that was frozen does not convict peers on the time it lost, and a peer
//! that really died meanwhile is still convicted within the bound, counted
//! from the end of the pause.

use std::time::{Duration, Instant};

use heartbeater_core::{
    DetectorConfig, EventKind, Expired, Path, PauseGuard, PauseThreshold, PeerSpec, PeerState,
    PeerTable, Probe, Reply,
};

const MS: Duration = Duration::from_millis(1);
const PERIOD: Duration = Duration::from_millis(100);

/// One monitor: its table, its guard and its clock, stepped by hand the way
/// the driver steps them at each wake-up.
struct Monitor {
    table: PeerTable,
    guard: PauseGuard,
    now: Instant,
    /// Heartbeats sent and not yet answered or expired, in order.
    in_flight: Vec<Probe>,
    downs: usize,
    ups: usize,
    pauses: usize,
}

/// The peer's round trip: slow, so that several heartbeats are in flight
/// at any time (as on a long or congested link).
const RTT: Duration = Duration::from_millis(550);

impl Monitor {
    /// A monitor of one peer at 100 ms with a 700 ms timeout (the most
    /// allowed), three misses to convict.
    fn new(guard: PauseThreshold) -> Monitor {
        let mut table = PeerTable::new();
        let detector = DetectorConfig::new(PERIOD, Some(7 * PERIOD), Some(3)).unwrap();
        let now = Instant::now();
        table.upsert(
            PeerSpec::new("peer", "127.0.0.1", 7000, detector).unwrap(),
            now,
        );
        Monitor {
            table,
            guard: PauseGuard::new(guard),
            now,
            in_flight: Vec::new(),
            downs: 0,
            ups: 0,
            pauses: 0,
        }
    }

    /// One wake-up of the driver at the current time: the guard first, then
    /// due heartbeats, then the replies that have arrived (`RTT` after their
    /// heartbeat) from a peer that `answers`, then timeouts.
    fn wake(&mut self, answers: bool) {
        let t = self.now;
        if self
            .guard
            .observe(t, self.table.shortest_period())
            .is_some()
        {
            self.pauses += 1;
            self.table.on_local_pause(t);
        }
        let mut due = Vec::new();
        self.table.poll_due(t, &mut due);
        for probe in &due {
            self.table.mark_sent(probe.id, Path::Datagram, false);
        }
        self.in_flight.extend(due);
        if answers {
            let arrived = self
                .in_flight
                .iter()
                .take_while(|p| p.sent_at + RTT <= t)
                .count();
            for probe in self.in_flight.drain(..arrived) {
                self.table.on_reply(
                    probe.id,
                    Path::Datagram,
                    t,
                    Reply {
                        responder_id: "peer",
                        responder_epoch: 1,
                    },
                );
            }
        }
        let mut expired: Vec<Expired> = Vec::new();
        self.table.poll_expired(t, &mut expired);
        for event in self.table.drain_events() {
            match event.kind {
                EventKind::PeerDown => self.downs += 1,
                EventKind::PeerUp => self.ups += 1,
                _ => {}
            }
        }
    }

    /// Runs on time, waking every 10 ms, for `d`.
    fn run(&mut self, d: Duration, answers: bool) {
        let end = self.now + d;
        while self.now < end {
            self.now += 10 * MS;
            self.wake(answers);
        }
    }

    /// Freezes for `d` (nothing runs), while the peer's replies, if it
    /// answers, arrive and wait unread.
    fn freeze(&mut self, d: Duration) {
        self.now += d;
    }

    fn state(&self) -> PeerState {
        self.table.status("peer").unwrap().state
    }
}

#[test]
fn a_frozen_monitor_convicts_nobody_on_waking() {
    for pause in [500 * MS, 2000 * MS, 5000 * MS] {
        let mut m = Monitor::new(PauseThreshold::Auto);
        m.run(Duration::from_secs(1), true);
        assert_eq!(m.state(), PeerState::Alive);
        // Six heartbeats in flight when the monitor freezes; the peer
        // answers them all, but nobody reads the answers until the wake-up,
        // when they are older than the timeout.
        assert!(m.in_flight.len() >= 5, "{} in flight", m.in_flight.len());
        m.freeze(pause);
        m.wake(true);
        m.run(Duration::from_secs(1), true);
        assert_eq!(m.downs, 0, "no PeerDown after a {pause:?} pause");
        assert_eq!(m.pauses, 1, "the guard saw the {pause:?} pause once");
        assert_eq!(m.state(), PeerState::Alive);
    }
}

#[test]
fn without_the_guard_the_same_pause_is_a_false_down() {
    let mut m = Monitor::new(PauseThreshold::Off);
    m.run(Duration::from_secs(1), true);
    m.freeze(2000 * MS);
    m.wake(true);
    m.run(Duration::from_secs(1), true);
    assert_eq!(m.pauses, 0);
    assert_eq!(m.downs, 1, "the control: the unguarded rule convicts");
    assert_eq!(m.ups, 2, "and flaps back up");
}

#[test]
fn a_peer_that_died_during_the_pause_is_convicted_within_the_bound_after_it() {
    let mut m = Monitor::new(PauseThreshold::Auto);
    m.run(Duration::from_secs(1), true);
    // The peer dies, and then the monitor freezes for 2 s.
    m.freeze(2000 * MS);
    let woke = m.now;
    m.wake(false);
    assert_eq!(m.downs, 0, "not convicted on the pause itself");
    let bound = DetectorConfig::new(PERIOD, Some(7 * PERIOD), Some(3))
        .unwrap()
        .detection_bound();
    while m.downs == 0 {
        m.now += 10 * MS;
        m.wake(false);
        assert!(
            m.now - woke <= bound + 10 * MS,
            "still not convicted {:?} after the pause (bound {bound:?})",
            m.now - woke
        );
    }
    assert_eq!(m.state(), PeerState::Unreachable);
}

#[test]
fn ordinary_scheduling_noise_voids_nothing() {
    let mut m = Monitor::new(PauseThreshold::Auto);
    // Wake-ups 10 ms apart, and one 40 ms late: under the 50 ms threshold.
    m.run(Duration::from_secs(1), true);
    m.freeze(40 * MS);
    m.wake(true);
    m.run(Duration::from_secs(1), true);
    assert_eq!(m.pauses, 0);
    let status = m.table.status("peer").unwrap();
    assert_eq!(
        status.heartbeats_acked + m.in_flight.len() as u64,
        status.heartbeats_sent,
        "every heartbeat answered so far was counted"
    );
    assert_eq!(status.missed, 0);
}

#[test]
fn a_peer_whose_heartbeat_was_voided_gets_a_fresh_one_at_once() {
    let mut table = PeerTable::new();
    let t0 = Instant::now();
    let fast = DetectorConfig::new(PERIOD, None, None).unwrap();
    let slow = DetectorConfig::new(Duration::from_secs(10), None, None).unwrap();
    table.upsert(PeerSpec::new("fast", "127.0.0.1", 7000, fast).unwrap(), t0);
    table.upsert(PeerSpec::new("slow", "127.0.0.1", 7001, slow).unwrap(), t0);
    let mut guard = PauseGuard::default();
    guard.observe(t0, table.shortest_period());
    let mut due = Vec::new();
    table.poll_due(t0, &mut due);
    assert_eq!(due.len(), 2);
    // Frozen for 300 ms, six times the threshold of the 100 ms peer; the
    // slow peer's next heartbeat is 10 s away.
    let woke = t0 + 300 * MS;
    assert!(guard.observe(woke, table.shortest_period()).is_some());
    assert_eq!(table.on_local_pause(woke), 2, "both heartbeats voided");
    let mut fresh = Vec::new();
    table.poll_due(woke, &mut fresh);
    let ids: Vec<String> = fresh
        .iter()
        .filter_map(|p| table.spec(p.id.peer()).map(|s| s.peer_id.to_string()))
        .collect();
    assert_eq!(ids, ["fast", "slow"], "the slow peer too, not 10 s later");
}
