//! `topic`: messages per second from a publisher to 10 subscribers (each
//! its own node, in a helper process), with heartbeats at 100 ms and
//! without, alternated so that drift hits both alike.

use std::time::{Duration, Instant};

use heartbeater::{HeartbeatParameters, HeartbeatServer};

use super::{median, Settings};
use crate::child::Helper;
use crate::report::Row;

const SUBSCRIBERS: usize = 10;
const TOPIC: &str = "bench";

/// Messages delivered per second to each subscriber over `window`.
async fn rate(
    publisher: &heartbeater::TopicPublisher,
    subs: &mut Helper,
    window: Duration,
) -> anyhow::Result<f64> {
    let payload = vec![0u8; 64];
    // Warm up, so queues are in their steady state.
    let warm = Instant::now() + Duration::from_millis(200);
    while Instant::now() < warm {
        publisher.send(payload.clone()).await;
    }
    let r0 = subs.ask("received").await?["received"]
        .as_u64()
        .unwrap_or(0);
    let t0 = Instant::now();
    let end = t0 + window;
    while Instant::now() < end {
        for _ in 0..64 {
            publisher.send(payload.clone()).await;
        }
    }
    let r1 = subs.ask("received").await?["received"]
        .as_u64()
        .unwrap_or(0);
    Ok((r1 - r0) as f64 / SUBSCRIBERS as f64 / t0.elapsed().as_secs_f64())
}

pub async fn run(s: &Settings) -> anyhow::Result<Vec<Row>> {
    let node = HeartbeatServer::builder()
        .server_port(0)
        .in_memory()
        .build()?;
    let addr = node.start().await?;
    let publisher = node.create_publisher(TOPIC)?;
    let mut subs = Helper::start(&[
        "subscribers",
        "--count",
        &SUBSCRIBERS.to_string(),
        "--publisher",
        &addr.to_string(),
        "--topic",
        TOPIC,
    ])
    .await?;
    let params = HeartbeatParameters::builder()
        .heartbeat_rate(Duration::from_millis(100))
        .heartbeat_timeout(Duration::from_millis(100))
        .build()?;
    let (mut on, mut off) = (Vec::new(), Vec::new());
    // Short alternating windows: a 1 % goal needs the two sides measured
    // under the same conditions more than it needs long windows.
    let window = s.window() / 2;
    // The order alternates too: on a machine whose speed drifts within a
    // run, "off" always first would favour one side.
    for round in 0..(s.rounds() * 4) {
        if round % 2 == 0 {
            off.push(rate(&publisher, &mut subs, window).await?);
        }
        publisher.activate_heartbeats(Quiet, params)?;
        on.push(rate(&publisher, &mut subs, window).await?);
        anyhow::ensure!(
            publisher.heartbeats_sent() > 0,
            "heartbeats were not sent while active"
        );
        publisher.deactivate_heartbeats();
        if round % 2 == 1 {
            off.push(rate(&publisher, &mut subs, window).await?);
        }
    }
    drop(subs);
    node.stop().await?;
    let (on, off) = (median(on), median(off));
    Ok(vec![
        Row::new(
            "topic",
            "throughput_ratio_hb_on_off",
            on / off,
            "ratio",
            ">= 0.99",
        ),
        Row::new("topic", "msgs_per_s_hb_on", on, "msgs/s", "-").against("heartbeats off", off),
    ])
}

/// Connection changes are not what this scenario measures.
struct Quiet;

impl heartbeater::ClientConnectionListener for Quiet {
    fn on_client_connected(&self, _: &str, _: heartbeater::Uuid) {}
    fn on_client_disconnected(&self, _: &str, _: heartbeater::Uuid) {}
}
