//! Local health awareness on a table with an injected clock: when every
//! peer goes silent at once, the monitor's own network is the likelier
//! culprit, and it waits longer before convicting them all; one peer dying
//! alone is convicted within the bound as before.

use std::time::{Duration, Instant};

use heartbeater_core::{DetectorConfig, EventKind, Path, PeerSpec, PeerTable, Probe, Reply};

const MS: Duration = Duration::from_millis(1);
const PEERS: usize = 8;

struct Monitor {
    table: PeerTable,
    now: Instant,
    in_flight: Vec<Probe>,
    /// When each peer was convicted, after the start of the silence.
    downs: Vec<(String, Duration)>,
    silence_from: Option<Instant>,
}

impl Monitor {
    fn new() -> Monitor {
        let mut table = PeerTable::new();
        let now = Instant::now();
        for i in 0..PEERS {
            let detector = DetectorConfig::new(100 * MS, None, None).unwrap();
            table.upsert(
                PeerSpec::new(&format!("peer-{i}"), "127.0.0.1", 7000, detector).unwrap(),
                now,
            );
        }
        Monitor {
            table,
            now,
            in_flight: Vec::new(),
            downs: Vec::new(),
            silence_from: None,
        }
    }

    /// Runs for `d` in 5 ms steps; `answers(peer)` says who replies.
    fn run(&mut self, d: Duration, answers: impl Fn(&str) -> bool) {
        let end = self.now + d;
        while self.now < end {
            self.now += 5 * MS;
            let t = self.now;
            let mut due = Vec::new();
            self.table.poll_due(t, &mut due);
            for p in &due {
                self.table.mark_sent(p.id, Path::Datagram, false);
            }
            self.in_flight.extend(due);
            for p in std::mem::take(&mut self.in_flight) {
                let id = self.table.spec(p.id.peer()).map(|s| s.peer_id.to_string());
                match id {
                    Some(id) if answers(&id) => {
                        self.table.on_reply(
                            p.id,
                            Path::Datagram,
                            t,
                            Reply {
                                responder_id: &id,
                                responder_epoch: 1,
                            },
                        );
                    }
                    _ => self.in_flight.push(p),
                }
            }
            self.table.poll_expired(t, &mut Vec::new());
            self.in_flight.retain(|p| self.table.in_flight(p.id));
            for e in self.table.drain_events() {
                if e.kind == EventKind::PeerDown {
                    let since = self.silence_from.map_or(Duration::ZERO, |s| t - s);
                    self.downs.push((e.peer_id.to_string(), since));
                }
            }
        }
    }
}

#[test]
fn when_every_peer_goes_silent_at_once_the_monitor_widens_its_tolerance() {
    let mut m = Monitor::new();
    m.run(Duration::from_secs(1), |_| true);
    assert_eq!(m.table.awareness_score(), 0);
    // The monitor's own link goes: nobody answers.
    m.silence_from = Some(m.now);
    m.run(500 * MS, |_| false);
    assert!(
        m.downs.is_empty(),
        "nobody convicted at the plain bound of 400 ms"
    );
    assert!(m.table.awareness_score() > 0);
    // Still convicted in the end, within four times the bound.
    m.run(Duration::from_secs(2), |_| false);
    assert_eq!(m.downs.len(), PEERS);
    assert!(
        m.downs.iter().all(|(_, after)| *after <= 4 * 400 * MS),
        "{:?}",
        m.downs
    );
    // Back to health: the score decays once things are quiet again.
    m.run(Duration::from_secs(5), |_| true);
    assert_eq!(m.table.awareness_score(), 0);
}

#[test]
fn one_peer_dying_alone_is_convicted_within_the_bound() {
    let mut m = Monitor::new();
    m.run(Duration::from_secs(1), |_| true);
    m.silence_from = Some(m.now);
    m.run(Duration::from_secs(1), |id| id != "peer-3");
    assert_eq!(m.table.awareness_score(), 0);
    assert_eq!(m.downs.len(), 1);
    let (id, after) = &m.downs[0];
    assert_eq!(id, "peer-3");
    assert!(*after <= 400 * MS + 5 * MS, "{after:?}");
}

#[test]
fn peers_already_down_do_not_keep_the_monitor_on_alert() {
    let mut m = Monitor::new();
    // Half the registry is decommissioned: never answers, convicted once.
    let gone = |id: &str| matches!(id, "peer-0" | "peer-1" | "peer-2" | "peer-3");
    m.run(Duration::from_secs(3), |id| !gone(id));
    assert_eq!(m.downs.len(), 4);
    assert_eq!(
        m.table.awareness_score(),
        0,
        "the silence of peers already down says nothing about the monitor"
    );
    // So a live peer that dies now is convicted within the plain bound.
    m.downs.clear();
    m.silence_from = Some(m.now);
    m.run(Duration::from_secs(1), |id| !gone(id) && id != "peer-4");
    assert_eq!(m.downs.len(), 1, "{:?}", m.downs);
    assert!(m.downs[0].1 <= 400 * MS + 5 * MS, "{:?}", m.downs);
}
