//! The topic heartbeats snippet of the original documentation, in Rust: a
//! publisher activates heartbeats with a connection listener; two
//! subscribers connect; one unsubscribes and is reported disconnected; then
//! heartbeats are deactivated.
//!
//! Run with `cargo run -p heartbeater --example topic_heartbeats`.

use std::time::Duration;

use heartbeater::{ClientConnectionListener, HeartbeatParameters, HeartbeatServer, Uuid};

/// Create the client connection listener.
struct ClientConnectionPrinter;

impl ClientConnectionListener for ClientConnectionPrinter {
    fn on_client_connected(&self, topic: &str, client_instance_id: Uuid) {
        println!("connected:    {client_instance_id} on {topic}");
    }

    fn on_client_disconnected(&self, topic: &str, client_instance_id: Uuid) {
        println!("disconnected: {client_instance_id} on {topic}");
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pub_instance = HeartbeatServer::builder()
        .server_port(0)
        .in_memory()
        .build()?;
    let addr = pub_instance.start().await?;

    // Create 1 publisher.
    let publisher = pub_instance.create_publisher("utopic1")?;

    // Activate heartbeats: every 100 ms; a client is disconnected after 3
    // unanswered heartbeats.
    publisher.activate_heartbeats(
        ClientConnectionPrinter,
        HeartbeatParameters::builder()
            .heartbeat_rate(Duration::from_millis(100))
            .build()?,
    )?;

    // Two subscribers on two other nodes.
    let sub_one = HeartbeatServer::builder().in_memory().build()?;
    let sub_two = HeartbeatServer::builder().in_memory().build()?;
    let first = sub_one.subscribe("utopic1", addr, |topic: &str, msg: &[u8]| {
        println!(
            "subscriber one got {:?} on {topic}",
            String::from_utf8_lossy(msg)
        );
    })?;
    let _second = sub_two.subscribe("utopic1", addr, |topic: &str, msg: &[u8]| {
        println!(
            "subscriber two got {:?} on {topic}",
            String::from_utf8_lossy(msg)
        );
    })?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    publisher.send("hello, subscribers").await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // One subscriber leaves: reported disconnected within 3 x 100 ms + 100 ms.
    println!("subscriber one ({}) unsubscribes", sub_one.instance_id());
    drop(first);
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Deactivate heartbeats: no more checks, no more events.
    publisher.deactivate_heartbeats();
    println!("heartbeats active: {}", publisher.is_heartbeats_active());
    pub_instance.stop().await?;
    Ok(())
}
