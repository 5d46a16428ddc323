//! Which clients of a topic are connected, judged by heartbeats sent over the
//! topic's own message path (seed 001), as a sans-IO state machine.
//!
//! Rules, per tick of `heartbeat_rate`:
//! 1. every known client's count of unanswered checks goes up by one;
//! 2. a client whose count reaches `max_client_conn_checks` is reported
//!    disconnected and forgotten;
//! 3. then one heartbeat request is opened, which every client answers.
//!
//! A response to a request that is still open (sent at most
//! `heartbeat_timeout` ago) reports an unknown client connected, or resets a
//! known client's count. A response to a closed or unknown request is
//! discarded. A client that stops answering is therefore reported
//! disconnected `max_client_conn_checks x heartbeat_rate` after its last
//! answer, to within one tick.
//!
//! Each transition is reported exactly once: a client is connected once until
//! it is disconnected, and a disconnected client is forgotten, so its next
//! valid answer reports it connected again. A client the driver knows to be
//! gone for another reason (its stream was dropped for being too slow) is
//! forgotten through [`ClientConnectionTracker::forget`], which reports it
//! disconnected at once if it was connected, and only then. Deactivation is
//! the driver dropping the tracker; a new tracker starts with no clients and no open
//! request, so a late answer to a request of the old one is discarded.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use crate::validation::{check_count, check_interval, ValidationError};

/// Timing of topic heartbeats: the seed's `HeartbeatParameters`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackerConfig {
    /// Time between two heartbeat requests, and between two checks.
    pub heartbeat_rate: Duration,
    /// How long after a request its responses still count.
    pub heartbeat_timeout: Duration,
    /// Consecutive unanswered checks that make a client disconnected.
    pub max_client_conn_checks: NonZeroU32,
}

impl TrackerConfig {
    /// Validates: rate and timeout 1 ms to 1 hour, checks 1 to 1000.
    pub fn new(
        heartbeat_rate: Duration,
        heartbeat_timeout: Duration,
        max_client_conn_checks: u32,
    ) -> Result<Self, ValidationError> {
        check_interval("heartbeat_rate", heartbeat_rate)?;
        check_interval("heartbeat_timeout", heartbeat_timeout)?;
        let max_client_conn_checks = check_count("max_client_conn_checks", max_client_conn_checks)?;
        Ok(Self {
            heartbeat_rate,
            heartbeat_timeout,
            max_client_conn_checks,
        })
    }
}

impl Default for TrackerConfig {
    /// The seed's defaults: rate 1000 ms, timeout 1000 ms, 3 checks.
    fn default() -> Self {
        Self {
            heartbeat_rate: Duration::from_millis(1000),
            heartbeat_timeout: Duration::from_millis(1000),
            max_client_conn_checks: NonZeroU32::MIN.saturating_add(2),
        }
    }
}

/// A change in a client's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionChange<C> {
    /// The client answered a heartbeat: it receives the topic's messages.
    Connected(C),
    /// The client left `max_client_conn_checks` checks unanswered.
    Disconnected(C),
}

/// What a tick asks the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick<C> {
    /// Clients that just disconnected, in the order they were first seen.
    pub disconnected: Vec<C>,
    /// The id of the heartbeat request to send now.
    pub request_id: u64,
}

/// Connection state of every client of one topic publisher.
#[derive(Debug, Clone)]
pub struct ClientConnectionTracker<C> {
    config: TrackerConfig,
    /// Unanswered checks per connected client.
    clients: HashMap<C, u32>,
    /// First-seen order, so disconnections are reported deterministically.
    order: Vec<C>,
    /// Open requests, oldest first: (id, sent at).
    open: VecDeque<(u64, Instant)>,
    next_request: u64,
    next_tick: Instant,
}

impl<C: Copy + Eq + Hash> ClientConnectionTracker<C> {
    /// A tracker with no clients whose first tick is due at `now`.
    pub fn new(config: TrackerConfig, now: Instant) -> Self {
        Self {
            config,
            clients: HashMap::new(),
            order: Vec::new(),
            open: VecDeque::new(),
            next_request: 1,
            next_tick: now,
        }
    }

    /// Numbers this tracker's requests from `first`. A driver that activates
    /// and deactivates repeatedly continues the numbering of the previous
    /// tracker, so a late answer to an old request can never match a new one.
    pub fn with_first_request_id(mut self, first: u64) -> Self {
        self.next_request = first;
        self
    }

    /// The id the next request will get.
    pub fn next_request_id(&self) -> u64 {
        self.next_request
    }

    /// When [`ClientConnectionTracker::on_tick`] is next due.
    pub fn next_tick(&self) -> Instant {
        self.next_tick
    }

    /// The configuration in force.
    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    /// One check: counts, disconnects, then opens a new heartbeat request.
    /// A tick later than scheduled counts once, like a punctual one: the
    /// driver's stall is not the clients' fault.
    pub fn on_tick(&mut self, now: Instant) -> Tick<C> {
        let max = self.config.max_client_conn_checks.get();
        let mut disconnected = Vec::new();
        for client in &self.order {
            if let Some(count) = self.clients.get_mut(client) {
                *count += 1;
                if *count >= max {
                    disconnected.push(*client);
                }
            }
        }
        for client in &disconnected {
            self.clients.remove(client);
        }
        self.order.retain(|c| self.clients.contains_key(c));

        while matches!(self.open.front(), Some((_, sent)) if now.saturating_duration_since(*sent) > self.config.heartbeat_timeout)
        {
            self.open.pop_front();
        }
        let request_id = self.next_request;
        self.next_request += 1;
        self.open.push_back((request_id, now));

        let rate = self.config.heartbeat_rate;
        self.next_tick += rate;
        if self.next_tick <= now {
            self.next_tick = now + rate;
        }
        Tick {
            disconnected,
            request_id,
        }
    }

    /// `client` answered heartbeat request `request_id` at `now`. Returns
    /// `Connected` when that makes a new client known.
    pub fn on_response(
        &mut self,
        request_id: u64,
        client: C,
        now: Instant,
    ) -> Option<ConnectionChange<C>> {
        let open = self
            .open
            .iter()
            .find(|(id, _)| *id == request_id)
            .is_some_and(|(_, sent)| {
                now.saturating_duration_since(*sent) <= self.config.heartbeat_timeout
            });
        if !open {
            return None;
        }
        match self.clients.insert(client, 0) {
            Some(_) => None,
            None => {
                self.order.push(client);
                Some(ConnectionChange::Connected(client))
            }
        }
    }

    /// The driver dropped `client` for a reason of its own (its stream was
    /// too slow to keep): forgets it now instead of waiting for its checks to
    /// run out. Returns `Disconnected` if it was connected, `None` if it was
    /// not (never answered, or already reported disconnected), so each
    /// transition is still reported once. A later valid answer reports it
    /// connected again, as after any disconnection.
    pub fn forget(&mut self, client: &C) -> Option<ConnectionChange<C>> {
        self.clients.remove(client)?;
        self.order.retain(|c| c != client);
        Some(ConnectionChange::Disconnected(*client))
    }

    /// Clients now connected, in the order they were first seen.
    pub fn connected(&self) -> &[C] {
        &self.order
    }

    /// Unanswered checks of a connected client.
    pub fn unanswered(&self, client: &C) -> Option<u32> {
        self.clients.get(client).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn tracker(rate: u64, timeout: u64, checks: u32, t0: Instant) -> ClientConnectionTracker<u8> {
        ClientConnectionTracker::new(
            TrackerConfig::new(ms(rate), ms(timeout), checks).unwrap(),
            t0,
        )
    }

    /// Runs ticks at every multiple of the rate up to `until`, with `answer`
    /// deciding who answers each request right away; returns when each
    /// client was reported disconnected.
    fn run(
        t: &mut ClientConnectionTracker<u8>,
        t0: Instant,
        until: Duration,
        answer: impl Fn(Duration) -> Vec<u8>,
    ) -> Vec<(u8, Duration)> {
        let mut out = Vec::new();
        while t.next_tick() <= t0 + until {
            let now = t.next_tick();
            let tick = t.on_tick(now);
            out.extend(tick.disconnected.iter().map(|c| (*c, now - t0)));
            for c in answer(now - t0) {
                t.on_response(tick.request_id, c, now + ms(1));
            }
        }
        out
    }

    #[test]
    fn seed_example_rate_2000_timeout_3000_checks_5_disconnects_10s_after_the_last_answer() {
        let t0 = Instant::now();
        let mut t = tracker(2000, 3000, 5, t0);
        // The client answers every request up to and including the one at 4 s.
        let downs = run(&mut t, t0, Duration::from_secs(30), |at| {
            if at <= Duration::from_secs(4) {
                vec![7]
            } else {
                vec![]
            }
        });
        // Last answer at 4 s (+1 ms): disconnected at the tick of 14 s.
        assert_eq!(downs, vec![(7, Duration::from_secs(14))]);
    }

    #[test]
    fn defaults_disconnect_3s_after_the_last_answer() {
        let t0 = Instant::now();
        let mut t = ClientConnectionTracker::new(TrackerConfig::default(), t0);
        let downs = run(&mut t, t0, Duration::from_secs(20), |at| {
            if at == Duration::ZERO {
                vec![1]
            } else {
                vec![]
            }
        });
        assert_eq!(downs, vec![(1, Duration::from_secs(3))]);
    }

    #[test]
    fn a_response_from_an_unknown_client_connects_it_exactly_once() {
        let t0 = Instant::now();
        let mut t = tracker(100, 100, 3, t0);
        let tick = t.on_tick(t0);
        assert_eq!(
            t.on_response(tick.request_id, 1, t0 + ms(5)),
            Some(ConnectionChange::Connected(1))
        );
        assert_eq!(
            t.on_response(tick.request_id, 1, t0 + ms(6)),
            None,
            "duplicate answer"
        );
        let tick = t.on_tick(t0 + ms(100));
        assert_eq!(t.unanswered(&1), Some(1));
        assert_eq!(t.on_response(tick.request_id, 1, t0 + ms(105)), None);
        assert_eq!(t.unanswered(&1), Some(0), "a known client's count is reset");
    }

    #[test]
    fn a_response_after_the_timeout_does_not_reset_the_count() {
        let t0 = Instant::now();
        let mut t = tracker(100, 50, 3, t0);
        let first = t.on_tick(t0);
        t.on_response(first.request_id, 1, t0 + ms(10));
        let late = t.on_tick(t0 + ms(100));
        assert_eq!(t.on_response(late.request_id, 1, t0 + ms(151)), None);
        assert_eq!(
            t.unanswered(&1),
            Some(1),
            "51 ms after the request is too late"
        );
        let second = t.on_tick(t0 + ms(200));
        assert_eq!(t.unanswered(&1), Some(2));
        let third = t.on_tick(t0 + ms(300));
        assert_eq!(third.disconnected, vec![1]);
        // Answers to requests of a long-gone tick are discarded, even from an
        // unknown client.
        assert_eq!(t.on_response(second.request_id, 2, t0 + ms(300)), None);
    }

    #[test]
    fn one_request_answered_by_several_clients_marks_all_of_them() {
        let t0 = Instant::now();
        let mut t = tracker(100, 100, 2, t0);
        let tick = t.on_tick(t0);
        for c in [3, 1, 2] {
            assert_eq!(
                t.on_response(tick.request_id, c, t0 + ms(1)),
                Some(ConnectionChange::Connected(c))
            );
        }
        assert_eq!(t.connected(), &[3, 1, 2]);
        let tick = t.on_tick(t0 + ms(100));
        t.on_response(tick.request_id, 1, t0 + ms(101));
        assert_eq!(
            t.on_tick(t0 + ms(200)).disconnected,
            vec![3, 2],
            "two unanswered checks, reported in first-seen order; 1 answered in between"
        );
        assert_eq!(t.connected(), &[1]);
    }

    #[test]
    fn a_disconnected_client_that_answers_again_is_connected_again() {
        let t0 = Instant::now();
        let mut t = tracker(100, 100, 1, t0);
        let tick = t.on_tick(t0);
        t.on_response(tick.request_id, 9, t0);
        assert_eq!(t.on_tick(t0 + ms(100)).disconnected, vec![9]);
        let tick = t.on_tick(t0 + ms(200));
        assert_eq!(
            t.on_response(tick.request_id, 9, t0 + ms(201)),
            Some(ConnectionChange::Connected(9))
        );
    }

    #[test]
    fn a_fresh_tracker_discards_answers_to_the_old_ones_requests() {
        let t0 = Instant::now();
        let mut old = tracker(100, 100, 3, t0);
        let tick = old.on_tick(t0);
        old.on_response(tick.request_id, 1, t0);
        // Deactivate, then activate again: a new tracker that continues the
        // numbering.
        let mut fresh =
            tracker(100, 100, 3, t0 + ms(10)).with_first_request_id(old.next_request_id());
        assert_eq!(fresh.on_response(tick.request_id, 1, t0 + ms(20)), None);
        assert!(fresh.connected().is_empty(), "no client carried over");
        let new_tick = fresh.on_tick(t0 + ms(10));
        assert_ne!(new_tick.request_id, tick.request_id);
        assert_eq!(
            fresh.on_response(tick.request_id, 1, t0 + ms(20)),
            None,
            "old request, new tracker"
        );
        assert_eq!(
            fresh.on_response(new_tick.request_id, 1, t0 + ms(20)),
            Some(ConnectionChange::Connected(1))
        );
    }

    #[test]
    fn forgetting_a_connected_client_disconnects_it_once_and_at_once() {
        let t0 = Instant::now();
        let mut t = tracker(100, 100, 3, t0);
        let tick = t.on_tick(t0);
        for c in [1, 2] {
            t.on_response(tick.request_id, c, t0 + ms(1));
        }
        // At 50 ms, long before its 3 checks run out at 300 ms.
        assert_eq!(t.forget(&1), Some(ConnectionChange::Disconnected(1)));
        assert_eq!(t.forget(&1), None, "already forgotten: reported once");
        assert_eq!(t.forget(&7), None, "never connected: nothing to report");
        assert_eq!(t.connected(), &[2]);
        // Its checks do not run out later: no second report at 300 ms.
        let mut downs = Vec::new();
        for at in [100, 200, 300] {
            let tick = t.on_tick(t0 + ms(at));
            downs.extend(tick.disconnected);
            t.on_response(tick.request_id, 2, t0 + ms(at + 1));
        }
        assert!(downs.is_empty(), "{downs:?}");
        // Answering again (a new stream) connects it again.
        let tick = t.on_tick(t0 + ms(400));
        assert_eq!(
            t.on_response(tick.request_id, 1, t0 + ms(401)),
            Some(ConnectionChange::Connected(1))
        );
        assert_eq!(t.connected(), &[2, 1]);
    }

    #[test]
    fn forgetting_a_client_whose_checks_already_ran_out_reports_nothing() {
        let t0 = Instant::now();
        let mut t = tracker(100, 100, 1, t0);
        let tick = t.on_tick(t0);
        t.on_response(tick.request_id, 4, t0);
        assert_eq!(t.on_tick(t0 + ms(100)).disconnected, vec![4]);
        assert_eq!(t.forget(&4), None);
    }

    #[test]
    fn invalid_parameters_are_errors() {
        assert_eq!(
            TrackerConfig::new(ms(0), ms(1), 1).unwrap_err().field,
            "heartbeat_rate"
        );
        assert_eq!(
            TrackerConfig::new(ms(1), Duration::from_secs(7200), 1)
                .unwrap_err()
                .field,
            "heartbeat_timeout"
        );
        assert_eq!(
            TrackerConfig::new(ms(1), ms(1), 0).unwrap_err().field,
            "max_client_conn_checks"
        );
        assert_eq!(
            TrackerConfig::new(ms(1), ms(1), 1001).unwrap_err().field,
            "max_client_conn_checks"
        );
        let d = TrackerConfig::default();
        assert_eq!(
            (
                d.heartbeat_rate,
                d.heartbeat_timeout,
                d.max_client_conn_checks.get()
            ),
            (ms(1000), ms(1000), 3)
        );
    }
}
