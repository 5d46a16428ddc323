//! The seed's usage example through the CLI, against real processes: two
//! nodes on their defaults register each other over the network at the
//! seed's 5 ms and see each other come up. What registrations over gRPC
//! may ask of a node, all peers together, is `--heartbeat-budget`.

mod common;

use std::process::Output;

use common::{bin, Serve};

#[test]
fn two_nodes_on_their_defaults_heartbeat_each_other_at_the_seeds_5_ms() {
    let one = Serve::start(&["--in-memory"]);
    let two = Serve::start(&["--in-memory"]);
    common::run_register(
        bin(),
        &one.addr,
        &two.identity,
        &two.addr,
        &["--freq", "5ms"],
    );
    common::run_register(
        bin(),
        &two.addr,
        &one.identity,
        &one.addr,
        &["--freq", "5ms"],
    );
    assert_eq!(one.expect("PeerUp")["peer_id"], two.identity.as_str());
    assert_eq!(two.expect("PeerUp")["peer_id"], one.identity.as_str());
}

fn register(node: &Serve, peer: &Serve, freq: &str) -> Output {
    bin()
        .args(["register", "--server", &node.addr])
        .args(["--peer-id", &peer.identity, "--peer", &peer.addr])
        .args(["--freq", freq])
        .output()
        .expect("register")
}

#[test]
fn a_registration_past_the_heartbeat_budget_is_refused_naming_it() {
    let node = Serve::start(&["--in-memory", "--heartbeat-budget", "300"]);
    let first = Serve::start(&["--in-memory"]);
    let second = Serve::start(&["--in-memory"]);
    let out = register(&node, &first, "5ms");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = register(&node, &second, "5ms");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ask for 200 heartbeats/s") && err.contains("budget of 300/s"),
        "{err}"
    );

    let out = register(&node, &second, "10ms");
    assert!(
        out.status.success(),
        "100/s more is the budget exactly: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
