//! `fanout` and `memory`: one node monitoring 10,000 peers at 1 Hz, the
//! peers served by responder processes (each peer its own socket and
//! identity). CPU from /proc over a 10 s window, scheduler lateness from the
//! node, RSS growth against the same node with no peers.

use std::time::{Duration, Instant};

use super::{node_client, register_all, responders, wait_all_alive};
use crate::child::Helper;
use crate::procfs;
use crate::report::Row;

const PEERS: usize = 10_000;

/// What one node costs monitoring `peers` at 1 Hz.
struct Cost {
    cores: f64,
    jitter_p99_ms: f64,
    bytes_per_peer: f64,
}

async fn measure(peers: &[(u16, String)], udp: bool) -> anyhow::Result<Cost> {
    let args: &[&str] = if udp {
        &["node"]
    } else {
        &["node", "--no-udp"]
    };
    let mut node = Helper::start(args).await?;
    let pid = node.pid()?;
    let client = node_client(node.ready["addr"].as_str().unwrap_or_default())?;
    // Warm the node's allocator and gRPC paths before the empty-node RSS.
    client.list_peers().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_empty = procfs::rss_bytes(pid)?;

    register_all(&client, peers, 1000).await?;
    if let Err(e) = wait_all_alive(&mut node, peers.len(), Duration::from_secs(120)).await {
        // The gRPC path may not keep up with 10,000 peers at 1 Hz on a slow
        // machine; what it costs while trying is still the figure wanted.
        anyhow::ensure!(!udp, e);
        eprintln!("note: gRPC path measured with peers still down: {e}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_full = procfs::rss_bytes(pid)?;

    node.ask("mark").await?;
    let cpu0 = procfs::cpu_seconds(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu = procfs::cpu_seconds(pid)? - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    let lateness = node.ask("lateness").await?;
    Ok(Cost {
        cores: cpu / wall,
        jitter_p99_ms: lateness["p99_us"].as_f64().unwrap_or(f64::NAN) / 1000.0,
        bytes_per_peer: (rss_full as f64 - rss_empty as f64) / peers.len() as f64,
    })
}

pub async fn run(s: &super::Settings) -> anyhow::Result<Vec<Row>> {
    let (_responders, groups) = responders(PEERS, 2_500).await?;
    let peers: Vec<(u16, String)> = groups.into_iter().flatten().collect();
    let ours = measure(&peers, true).await?;
    let mut rows = vec![
        Row::new("fanout", "cores_10k_1hz", ours.cores, "cores", "<= 0.1"),
        Row::new(
            "fanout",
            "tick_jitter_p99_ms",
            ours.jitter_p99_ms,
            "ms",
            "<= 5",
        ),
        Row::new(
            "memory",
            "bytes_per_peer",
            ours.bytes_per_peer,
            "bytes",
            "<= 1024",
        ),
    ];
    // The full run also measures the gRPC path (what a peer behind a UDP
    // filter costs, and the design before datagrams) against the same peers.
    if !s.quick {
        const GRPC: &str = "gRPC path (--no-udp)";
        let grpc = measure(&peers, false).await?;
        rows[0] = rows[0].clone().against(GRPC, grpc.cores);
        rows[1] = rows[1].clone().against(GRPC, grpc.jitter_p99_ms);
        rows[2] = rows[2].clone().against(GRPC, grpc.bytes_per_peer);
    }
    Ok(rows)
}
