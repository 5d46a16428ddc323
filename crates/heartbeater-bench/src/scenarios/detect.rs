//! `detect`: 1,000 peers at 100 ms; a quarter of them (one responder
//! process) killed at once. How far past the bound (`3 x 100 ms + 100 ms`)
//! each is declared down, and whether any live peer ever is.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use heartbeater::proto::PeerEventKind;

use super::{node_client, percentile, register_all, responders, wait_all_alive};
use crate::child::Helper;
use crate::report::Row;

const PEERS: usize = 1_000;
const BOUND: Duration = Duration::from_millis(400);

pub async fn run() -> anyhow::Result<Vec<Row>> {
    let (mut helpers, groups) = responders(PEERS, PEERS / 4).await?;
    let all: Vec<(u16, String)> = groups.iter().flatten().cloned().collect();
    let victims: HashSet<String> = groups[0].iter().map(|(_, id)| id.clone()).collect();
    let mut node = Helper::start(&["node"]).await?;
    let client = node_client(node.ready["addr"].as_str().unwrap_or_default())?;
    register_all(&client, &all, 100).await?;
    wait_all_alive(&mut node, PEERS, Duration::from_secs(60)).await?;

    let mut events = client.watch_peers(false).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(e)) = events.next().await {
            if e.kind == PeerEventKind::PeerDown as i32
                && tx.send((e.peer_id, Instant::now())).is_err()
            {
                return;
            }
        }
    });
    // A quiet stretch first: any PeerDown here is a false one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    helpers[0].kill().await?;
    let killed = Instant::now();
    tokio::time::sleep(BOUND * 3).await;

    let mut downs: HashMap<String, Instant> = HashMap::new();
    let mut false_downs = 0u64;
    while let Ok((peer, at)) = rx.try_recv() {
        if victims.contains(&peer) && at >= killed {
            downs.entry(peer).or_insert(at);
        } else {
            false_downs += 1;
        }
    }
    let mut over: Vec<u64> = victims
        .iter()
        .map(|v| match downs.get(v) {
            Some(at) => at.duration_since(killed).saturating_sub(BOUND).as_millis() as u64,
            // Never declared down within three bounds.
            None => (BOUND * 3).as_millis() as u64,
        })
        .collect();
    over.sort_unstable();
    Ok(vec![
        Row::new(
            "detect",
            "p99_over_bound_ms",
            percentile(&over, 0.99),
            "ms",
            "<= 10",
        ),
        Row::new("detect", "false_downs", false_downs as f64, "peers", "0"),
    ])
}
