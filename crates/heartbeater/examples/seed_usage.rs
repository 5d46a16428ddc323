//! The original usage example, in Rust: two servers, each with a client,
//! heartbeating each other, then deregistering and shutting down.
//!
//! Run with `cargo run -p heartbeater --example seed_usage`.

use std::thread::sleep;
use std::time::Duration;

use heartbeater::blocking::{HeartbeatClient, HeartbeatServer};
use heartbeater::{DeregisterPeerRequest, RegisterPeerRequest};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let host = "127.0.0.1";
    let deadline = Duration::from_millis(500);

    // 1-2. server one (epoch 2) and its client. Port 0: any free port (the
    //      original used 8181 and 8484).
    let server_one = HeartbeatServer::builder()
        .server_host(host)
        .server_port(0)
        .worker_count(1)
        .server_epoch(2)
        .in_memory()
        .build()?;
    let one = server_one.start()?;
    let mut client_one = HeartbeatClient::new(host, one.port(), deadline, 1)?;
    client_one.start()?;

    // 3-4. server two (epoch 3) and its client.
    let server_two = HeartbeatServer::builder()
        .server_host(host)
        .server_port(0)
        .worker_count(1)
        .server_epoch(3)
        .in_memory()
        .build()?;
    let two = server_two.start()?;
    let mut client_two = HeartbeatClient::new(host, two.port(), deadline, 1)?;
    client_two.start()?;

    // The seed's period, accepted over the network by a node's defaults.
    let heartbeat_freq_millis = 5;
    // 5-6. each server heartbeats the other.
    client_one.register_peer(RegisterPeerRequest {
        peer_id: server_two.identity(),
        peer_host: host.into(),
        peer_port: two.port().into(),
        heartbeat_freq_millis,
        ..Default::default()
    })?;
    client_two.register_peer(RegisterPeerRequest {
        peer_id: server_one.identity(),
        peer_host: host.into(),
        peer_port: one.port().into(),
        heartbeat_freq_millis,
        ..Default::default()
    })?;

    // 7. a few heartbeats go through.
    sleep(Duration::from_millis(heartbeat_freq_millis as u64 * 20));
    for (name, server) in [("one", &server_one), ("two", &server_two)] {
        for p in server.peers() {
            println!(
                "server {name} sees {} {} (epoch {:?}, {}/{} heartbeats acknowledged)",
                p.peer_id, p.state, p.epoch, p.heartbeats_acked, p.heartbeats_sent
            );
        }
    }

    // 8-9. deregister both ways: heartbeating stops.
    client_one.deregister_peer(DeregisterPeerRequest {
        peer_id: server_two.identity(),
    })?;
    client_two.deregister_peer(DeregisterPeerRequest {
        peer_id: server_one.identity(),
    })?;

    // n. shut everything down.
    client_one.stop()?;
    server_one.stop()?;
    client_two.stop()?;
    server_two.stop()?;
    println!(
        "stopped: server one running = {}, server two running = {}",
        server_one.is_running(),
        server_two.is_running()
    );
    Ok(())
}
