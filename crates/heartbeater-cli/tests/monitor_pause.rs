//! The monitor itself frozen: `kill -STOP` of a `serve` process for 2 s. On
//! waking it must not declare its live peer down (the local-pause guard),
//! and a peer killed afterwards must still be detected within the bound.
//!
//! The peer sits behind a relay that delays each way by 275 ms (a slow
//! link: a 550 ms round trip), registered at 100 ms with a 700 ms timeout,
//! so that five or six heartbeats are always in flight. Their answers
//! arrive during the freeze and wait unread; without the guard they are all
//! late on waking and convict the peer, as the control test shows. (On a
//! fast link a freeze leaves at most one heartbeat in flight, and the
//! count rule needs three misses.)

mod common;

use std::time::Duration;

use common::relay::Relay;
use common::{bin, Serve};

/// Each way.
const LINK_DELAY: Duration = Duration::from_millis(275);

fn register(monitor: &Serve, peer: &Serve, via: &Relay) {
    common::run_register(
        bin(),
        &monitor.addr,
        &peer.identity,
        &via.addr.to_string(),
        &["--freq", "100ms", "--timeout", "700ms"],
    );
}

fn slow_link_to(peer: &Serve) -> Relay {
    Relay::start(
        None,
        peer.addr.parse().expect("peer address"),
        LINK_DELAY,
        Duration::ZERO,
    )
}

/// Freezes the monitor for 2 s and returns the events about the peer that
/// follow within 3 s of waking.
fn freeze_monitor(monitor: &Serve, peer: &Serve, via: &Relay) -> Vec<String> {
    register(monitor, peer, via);
    assert_eq!(
        monitor.events_for(&peer.identity, Duration::from_secs(3)),
        ["Registered", "PeerUp"]
    );
    monitor.signal("STOP");
    std::thread::sleep(Duration::from_secs(2));
    monitor.signal("CONT");
    monitor.events_for(&peer.identity, Duration::from_secs(3))
}

#[test]
fn a_monitor_frozen_for_two_seconds_convicts_nobody_and_still_detects_a_kill() {
    let monitor = Serve::start(&["--in-memory"]);
    let mut peer = Serve::start(&["--in-memory"]);
    let link = slow_link_to(&peer);
    assert_eq!(
        freeze_monitor(&monitor, &peer, &link),
        Vec::<String>::new(),
        "no PeerDown (and so no PeerUp) after the freeze"
    );
    let said: Vec<String> = monitor.stderr.try_iter().collect();
    assert!(
        said.iter()
            .any(|l| l.contains("did not run for longer than its pause threshold")),
        "the node logs the pause: {said:?}"
    );
    // Now a real death: detected within max_missed x period + timeout of
    // the last reply, which may still be on the link for one delay after
    // the kill; timed by the node's own event timestamp.
    let bound = Duration::from_millis(3 * 100 + 700) + LINK_DELAY;
    let killed_at = unix_micros();
    peer.child.kill().expect("kill -9 the peer");
    let _ = peer.child.wait();
    let down = loop {
        let v = monitor
            .lines
            .recv_timeout(bound + common::PATIENCE)
            .expect("a PeerDown after the kill");
        if v["peer_id"] == peer.identity.as_str() {
            assert_eq!(v["event"], "PeerDown", "{v}");
            break v;
        }
    };
    let detected = Duration::from_micros(
        down["timestamp_micros"]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(killed_at),
    );
    eprintln!("killed peer detected after {detected:?} (bound {bound:?})");
    assert!(
        detected <= bound + Duration::from_millis(100),
        "detected after {detected:?}, bound {bound:?}"
    );
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[test]
fn without_the_guard_the_same_freeze_is_a_false_peer_down() {
    let monitor = Serve::start(&["--in-memory", "--pause-threshold", "off"]);
    let peer = Serve::start(&["--in-memory"]);
    let link = slow_link_to(&peer);
    assert_eq!(
        freeze_monitor(&monitor, &peer, &link),
        ["PeerDown", "PeerUp"],
        "the control: the unguarded count rule convicts a live peer, then flaps back"
    );
}
