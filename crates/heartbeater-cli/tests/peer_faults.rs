//! Peer faults against real processes: a frozen peer, a peer that restarts
//! faster than one period, and another process on a peer's port.

mod common;

use std::time::Duration;

use common::{bin, Serve};

fn register(monitor: &Serve, peer_id: &str, peer_addr: &str, freq: &str) {
    common::run_register(bin(), &monitor.addr, peer_id, peer_addr, &["--freq", freq]);
}

#[test]
fn a_frozen_peer_goes_down_once_and_comes_back_once() {
    let monitor = Serve::start(&["--in-memory"]);
    let peer = Serve::start(&["--in-memory"]);
    register(&monitor, &peer.identity, &peer.addr, "100ms");
    assert_eq!(
        monitor.events_for(&peer.identity, Duration::from_millis(800)),
        ["Registered", "PeerUp"]
    );
    peer.signal("STOP");
    let frozen = monitor.events_for(&peer.identity, Duration::from_secs(2));
    peer.signal("CONT");
    let thawed = monitor.events_for(&peer.identity, Duration::from_secs(2));
    assert_eq!(frozen, ["PeerDown"], "while frozen");
    assert_eq!(thawed, ["PeerUp"], "after SIGCONT");
}

#[test]
fn a_restart_faster_than_a_period_is_reported_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let monitor = Serve::start(&["--in-memory"]);
    let mut peer = Serve::start(&["--data-dir", &data]);
    // 2 s between heartbeats, 3 misses: the peer is back long before
    // anyone could call it unreachable.
    register(&monitor, &peer.identity, &peer.addr, "2s");
    assert_eq!(
        monitor.events_for(&peer.identity, Duration::from_millis(500)),
        ["Registered", "PeerUp"]
    );
    let (identity, addr) = (peer.identity.clone(), peer.addr.clone());
    peer.child.kill().unwrap();
    let _ = peer.child.wait();
    peer = Serve::start_at(&addr, &["--data-dir", &data]);
    assert_eq!(peer.identity, identity);
    let events = monitor.events_for(&identity, Duration::from_secs(5));
    assert_eq!(events, ["Restarted"], "no PeerDown, one Restarted");
}

#[test]
fn another_process_on_the_peers_port_is_an_identity_mismatch_and_unreachable() {
    let monitor = Serve::start(&["--in-memory"]);
    let mut peer = Serve::start(&["--in-memory"]);
    register(&monitor, &peer.identity, &peer.addr, "100ms");
    assert_eq!(
        monitor.events_for(&peer.identity, Duration::from_millis(800)),
        ["Registered", "PeerUp"]
    );
    let (identity, addr) = (peer.identity.clone(), peer.addr.clone());
    peer.child.kill().unwrap();
    let _ = peer.child.wait();
    let impostor = Serve::start_at(&addr, &["--in-memory"]);
    assert_ne!(impostor.identity, identity);
    let events = monitor.events_for(&identity, Duration::from_secs(3));
    assert!(events.iter().any(|e| e == "IdentityMismatch"), "{events:?}");
    assert!(events.contains(&"PeerDown".to_owned()), "{events:?}");
    assert!(
        !events.contains(&"PeerUp".to_owned()),
        "an impostor made it alive: {events:?}"
    );
}
