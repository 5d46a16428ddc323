//! `detect`: 1,000 peers at 100 ms; a quarter of them (one responder
//! process) killed at once. How far past the bound (`3 x 100 ms + 100 ms`)
//! each is declared down, and whether any live peer ever is.

use std::collections::HashSet;
use std::time::{Duration, Instant};

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

    let mut downs = super::Downs::watch(&client).await?;
    // A quiet stretch first: any PeerDown here is a false one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    helpers[0].kill().await?;
    let killed = Instant::now();
    tokio::time::sleep(BOUND * 3).await;
    let (over, false_downs) = downs.score(&victims, killed, BOUND, BOUND * 3);
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
