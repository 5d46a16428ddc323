//! `rpc`: unary `Heartbeat` calls against a node, and against a plain tonic
//! echo service with the same message sizes, each in its own process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use heartbeater::proto::heartbeat_service_client::HeartbeatServiceClient;
use heartbeater::proto::HeartbeatMessage;
use tonic::transport::Channel;

use super::{median, percentile, raw_client, Settings};
use crate::child::Helper;
use crate::report::Row;

const BASELINE: &str = "tonic echo (same messages)";

fn message() -> HeartbeatMessage {
    HeartbeatMessage {
        client_id: "00000000-0000-0000-0000-000000000000".into(),
        client_epoch: 1,
    }
}

pub async fn throughput(addr: &str, in_flight: usize, window: Duration) -> anyhow::Result<f64> {
    throughput_with(raw_client(addr).await?, in_flight, window).await
}

/// Calls/s of `in_flight` concurrent callers on one connection.
pub async fn throughput_with(
    client: HeartbeatServiceClient<Channel>,
    in_flight: usize,
    window: Duration,
) -> anyhow::Result<f64> {
    let calls = Arc::new(AtomicU64::new(0));
    let warmup = Instant::now() + Duration::from_millis(300);
    let end = warmup + window;
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let mut c = client.clone();
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let now = Instant::now();
                if now >= end {
                    return Ok::<(), tonic::Status>(());
                }
                c.heartbeat(message()).await?;
                if now >= warmup {
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(calls.load(Ordering::Relaxed) as f64 / window.as_secs_f64())
}

async fn latencies(addr: &str, window: Duration) -> anyhow::Result<Vec<u64>> {
    latencies_with(raw_client(addr).await?, window).await
}

/// Round-trip times of one caller at a time, in microseconds.
pub async fn latencies_with(
    mut client: HeartbeatServiceClient<Channel>,
    window: Duration,
) -> anyhow::Result<Vec<u64>> {
    for _ in 0..200 {
        client.heartbeat(message()).await?;
    }
    let end = Instant::now() + window;
    let mut out = Vec::new();
    while Instant::now() < end {
        let t = Instant::now();
        client.heartbeat(message()).await?;
        out.push(t.elapsed().as_micros() as u64);
    }
    Ok(out)
}

pub async fn run(s: &Settings) -> anyhow::Result<Vec<Row>> {
    let node = Helper::start(&["node"]).await?;
    let echo = Helper::start(&["echo"]).await?;
    let node_addr = node.ready["addr"].as_str().unwrap_or_default().to_owned();
    let echo_addr = echo.ready["addr"].as_str().unwrap_or_default().to_owned();

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut lat_ours, mut lat_theirs) = (Vec::new(), Vec::new());
    for _ in 0..s.rounds() {
        theirs.push(throughput(&echo_addr, 64, s.window()).await?);
        ours.push(throughput(&node_addr, 64, s.window()).await?);
        lat_theirs.extend(latencies(&echo_addr, s.window()).await?);
        lat_ours.extend(latencies(&node_addr, s.window()).await?);
    }
    lat_ours.sort_unstable();
    lat_theirs.sort_unstable();
    Ok(vec![
        Row::new(
            "rpc",
            "throughput_c64",
            median(ours),
            "calls/s",
            "ratio >= 0.9",
        )
        .against(BASELINE, median(theirs)),
        Row::new(
            "rpc",
            "latency_p50_c1_us",
            percentile(&lat_ours, 0.5),
            "us",
            "ratio <= 1.1",
        )
        .against(BASELINE, percentile(&lat_theirs, 0.5)),
        Row::new(
            "rpc",
            "latency_p99_c1_us",
            percentile(&lat_ours, 0.99),
            "us",
            "ratio <= 1.1",
        )
        .against(BASELINE, percentile(&lat_theirs, 0.99)),
    ])
}
