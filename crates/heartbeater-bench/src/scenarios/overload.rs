//! `overload`: a node asked for more heartbeats than it can carry degrades
//! instead of collapsing. In one run, without and with a cluster key:
//!
//! 1. the node's capacity: acknowledged heartbeats per second at
//!    saturation (256 peers at 1 ms, as `peer-path`), the better of the
//!    two modes;
//! 2. schedules asking 1x, 2x and 4x that capacity, with ordinary detector
//!    settings (a 10 ms period, a 50 ms timeout and 3 misses): the
//!    acknowledgements per second against the most the mode acknowledged at
//!    any load (its peak; the saturation run has far fewer peers, so it is
//!    no fair peak), and the peers declared down. Every peer answers, so
//!    every down is false.
//!
//! Without a key a silent heartbeat may move its peer to gRPC, which costs
//! far more than a datagram; the keyless runs against the keyed ones show
//! whether the node's own overload does that.

use std::time::{Duration, Instant};

use super::{node_client, register_all_with, responders_with, Settings};
use crate::child::Helper;
use crate::report::Row;

/// Peers of the saturation run, each at 1 ms.
const SATURATION_PEERS: usize = 256;
/// Period of every peer in the overloaded runs.
const PERIOD_MS: i64 = 10;
/// Their timeout: five periods, as a 1 s period with a 5 s timeout. The
/// peers share the node's two cores here, and a responder process that
/// waits its turn for a few scheduler slices must not read as dead.
const TIMEOUT_MS: i64 = 50;
/// At most this many peers per overloaded run, whatever the capacity.
const MAX_PEERS: usize = 12_000;
/// Responder sockets per helper process.
const PER_PROCESS: usize = 1_000;

/// What a node did over a window.
struct Window {
    acks_per_s: f64,
    /// Peers declared down since the node started.
    downs: u64,
    voided: u64,
    grpc_sent: u64,
    pauses: u64,
    /// Replies the node's socket dropped, its buffer full.
    dropped: u64,
    /// Heartbeats settled as unanswered at their timeout.
    timed_out: u64,
}

async fn work(node: &mut Helper) -> anyhow::Result<serde_json::Value> {
    node.ask("work").await
}

fn field(v: &serde_json::Value, name: &str) -> u64 {
    v[name].as_u64().unwrap_or(0)
}

/// Starts a node (with or without the key), registers `peers` with
/// `register`, lets it settle and measures one window.
async fn measure(
    keyed: bool,
    peers: &[(u16, String)],
    register: impl AsyncFnOnce(&heartbeater::HeartbeatClient, &[(u16, String)]) -> anyhow::Result<()>,
    window: Duration,
) -> anyhow::Result<Window> {
    let mut node = Helper::start_with(&["node"], Some(keyed)).await?;
    let client = node_client(node.ready["addr"].as_str().unwrap_or_default())?;
    register(&client, peers).await?;
    // Every peer heard once, or a while for the schedule to settle.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let counts = node.ask("counts").await?;
        if counts["alive"].as_u64().unwrap_or(0) + counts["unreachable"].as_u64().unwrap_or(0)
            >= peers.len() as u64
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (w0, t0) = (work(&mut node).await?, Instant::now());
    tokio::time::sleep(window).await;
    let (w1, t1) = (work(&mut node).await?, Instant::now());
    let acked = field(&w1, "acked").saturating_sub(field(&w0, "acked"));
    Ok(Window {
        acks_per_s: acked as f64 / (t1 - t0).as_secs_f64(),
        downs: field(&w1, "peer_down"),
        voided: field(&w1, "voided_overloaded"),
        grpc_sent: field(&w1, "sent_grpc"),
        pauses: field(&w1, "pauses"),
        dropped: field(&w1, "dropped_on_receive"),
        timed_out: field(&w1, "timed_out"),
    })
}

async fn saturate(
    client: &heartbeater::HeartbeatClient,
    peers: &[(u16, String)],
) -> anyhow::Result<()> {
    super::peer_path::register_fast(client, peers).await
}

async fn ordinary(
    client: &heartbeater::HeartbeatClient,
    peers: &[(u16, String)],
) -> anyhow::Result<()> {
    register_all_with(client, peers, PERIOD_MS, Some(TIMEOUT_MS)).await
}

/// Metric names per load (1x, 2x, 4x) and mode (keyless, keyed).
type Names = [[&'static str; 2]; 3];

const ACKS: Names = [
    ["acks_per_s_1x_keyless", "acks_per_s_1x_keyed"],
    ["acks_per_s_2x_keyless", "acks_per_s_2x_keyed"],
    ["acks_per_s_4x_keyless", "acks_per_s_4x_keyed"],
];
const DOWNS: Names = [
    ["peers_down_1x_keyless", "peers_down_1x_keyed"],
    ["peers_down_2x_keyless", "peers_down_2x_keyed"],
    ["peers_down_4x_keyless", "peers_down_4x_keyed"],
];
const VOIDED: Names = [
    ["voided_1x_keyless", "voided_1x_keyed"],
    ["voided_2x_keyless", "voided_2x_keyed"],
    ["voided_4x_keyless", "voided_4x_keyed"],
];
const GRPC_SENT: Names = [
    ["grpc_sent_1x_keyless", "grpc_sent_1x_keyed"],
    ["grpc_sent_2x_keyless", "grpc_sent_2x_keyed"],
    ["grpc_sent_4x_keyless", "grpc_sent_4x_keyed"],
];
const DROPPED: Names = [
    ["dropped_1x_keyless", "dropped_1x_keyed"],
    ["dropped_2x_keyless", "dropped_2x_keyed"],
    ["dropped_4x_keyless", "dropped_4x_keyed"],
];
const TIMED_OUT: Names = [
    ["timed_out_1x_keyless", "timed_out_1x_keyed"],
    ["timed_out_2x_keyless", "timed_out_2x_keyed"],
    ["timed_out_4x_keyless", "timed_out_4x_keyed"],
];
const PAUSES: Names = [
    ["pauses_1x_keyless", "pauses_1x_keyed"],
    ["pauses_2x_keyless", "pauses_2x_keyed"],
    ["pauses_4x_keyless", "pauses_4x_keyed"],
];
const OFFERED: [&str; 3] = ["offered_per_s_1x", "offered_per_s_2x", "offered_per_s_4x"];
const KEYLESS_VS_KEYED: [&str; 3] = [
    "keyless_acks_per_s_1x",
    "keyless_acks_per_s_2x",
    "keyless_acks_per_s_4x",
];
const FACTORS: [f64; 3] = [1.0, 2.0, 4.0];

pub async fn run(s: &Settings) -> anyhow::Result<Vec<Row>> {
    let window = s.window();
    let mut capacity = 0.0_f64;
    let mut rows = Vec::new();
    for keyed in [false, true] {
        let (_helpers, groups) =
            responders_with(SATURATION_PEERS, SATURATION_PEERS, Some(keyed)).await?;
        let peers: Vec<_> = groups.into_iter().flatten().collect();
        let w = measure(keyed, &peers, saturate, window).await?;
        rows.push(Row::new(
            "overload",
            if keyed {
                "saturation_acks_per_s_keyed"
            } else {
                "saturation_acks_per_s_keyless"
            },
            w.acks_per_s,
            "acks/s",
            "-",
        ));
        capacity = capacity.max(w.acks_per_s);
    }
    rows.push(Row::new(
        "overload",
        "capacity_acks_per_s",
        capacity,
        "acks/s",
        "the better mode",
    ));
    let per_peer = 1000.0 / PERIOD_MS as f64;
    // acks[load][mode]
    let mut acks = [[0.0_f64; 2]; 3];
    let mut measured = Vec::new();
    for (l, factor) in FACTORS.into_iter().enumerate() {
        let want = ((capacity * factor / per_peer).ceil() as usize).clamp(1, MAX_PEERS);
        rows.push(Row::new(
            "overload",
            OFFERED[l],
            want as f64 * per_peer,
            "heartbeats/s",
            if want == MAX_PEERS {
                "capped by MAX_PEERS"
            } else {
                "-"
            },
        ));
        for (k, keyed) in [false, true].into_iter().enumerate() {
            let (_helpers, groups) = responders_with(want, PER_PROCESS, Some(keyed)).await?;
            let peers: Vec<_> = groups.into_iter().flatten().collect();
            let w = measure(keyed, &peers, ordinary, window).await?;
            acks[l][k] = w.acks_per_s;
            measured.push((l, k, w));
        }
    }
    // The peak of each mode: the most it acknowledged at any load.
    let peak = |k: usize| acks.iter().map(|a| a[k]).fold(0.0, f64::max);
    for (l, k, w) in measured {
        rows.push(
            Row::new(
                "overload",
                ACKS[l][k],
                w.acks_per_s,
                "acks/s",
                if l == 0 { "-" } else { "ratio >= 0.8" },
            )
            .against("peak of the mode", peak(k)),
        );
        rows.push(Row::new(
            "overload",
            DOWNS[l][k],
            w.downs as f64,
            "peers",
            "0",
        ));
        let counts = [
            (VOIDED, w.voided, "heartbeats"),
            (GRPC_SENT, w.grpc_sent, "heartbeats"),
            (DROPPED, w.dropped, "datagrams"),
            (TIMED_OUT, w.timed_out, "heartbeats"),
            (PAUSES, w.pauses, "pauses"),
        ];
        for (names, value, unit) in counts {
            rows.push(Row::new("overload", names[l][k], value as f64, unit, "-"));
        }
    }
    for (l, a) in acks.iter().enumerate() {
        rows.push(
            Row::new(
                "overload",
                KEYLESS_VS_KEYED[l],
                a[0],
                "acks/s",
                if l == 0 { "-" } else { "ratio >= 0.8" },
            )
            .against("keyed", a[1]),
        );
    }
    Ok(rows)
}
