//! The benchmark scenarios. Each returns its rows, baseline included.

pub mod accuracy;
pub mod detect;
pub mod etcd;
pub mod fanout;
pub mod instructions;
pub mod load;
pub mod overload;
pub mod peer_path;
pub mod register;
pub mod restore;
pub mod rpc;
pub mod scale;
pub mod tls;
pub mod topic;

use std::time::Duration;

use anyhow::Context;
use heartbeater::proto::heartbeat_service_client::HeartbeatServiceClient;
use heartbeater::{HeartbeatClient, RegisterPeerRequest};
use tonic::transport::{Channel, Endpoint};

/// Run lengths: `--quick` for a smoke run under 3 minutes, the default for
/// steadier figures.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub quick: bool,
    /// The largest size the scale scenario measures.
    pub scale_max: usize,
}

impl Settings {
    /// Length of one measurement window.
    pub fn window(&self) -> Duration {
        if self.quick {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(5)
        }
    }

    /// Alternating rounds of measured system and baseline.
    pub fn rounds(&self) -> usize {
        if self.quick {
            1
        } else {
            3
        }
    }
}

pub async fn raw_client(addr: &str) -> anyhow::Result<HeartbeatServiceClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connect {addr}"))?;
    Ok(HeartbeatServiceClient::new(channel))
}

pub fn node_client(addr: &str) -> anyhow::Result<HeartbeatClient> {
    let (host, port) = addr.rsplit_once(':').context("addr")?;
    Ok(HeartbeatClient::new(
        host,
        port.parse()?,
        Duration::from_secs(30),
    )?)
}

/// The registration of the responder socket on `port` answering as `id`.
pub fn registration(port: u16, id: String, freq_ms: i64) -> RegisterPeerRequest {
    RegisterPeerRequest {
        peer_id: id,
        peer_host: "127.0.0.1".into(),
        peer_port: u32::from(port),
        heartbeat_freq_millis: freq_ms,
        timeout_millis: None,
        max_missed: None,
        ..Default::default()
    }
}

/// Registers every `(port, identity)` responder on the node, 64 at a time.
pub async fn register_all(
    client: &HeartbeatClient,
    peers: &[(u16, String)],
    freq_ms: i64,
) -> anyhow::Result<()> {
    register_all_with(client, peers, freq_ms, None).await
}

/// [`register_all`], with a timeout other than the default one period.
pub async fn register_all_with(
    client: &HeartbeatClient,
    peers: &[(u16, String)],
    freq_ms: i64,
    timeout_ms: Option<i64>,
) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    let results: Vec<_> = futures_util::stream::iter(peers.iter().cloned())
        .map(|(port, id)| {
            let client = client.clone();
            let mut request = registration(port, id, freq_ms);
            request.timeout_millis = timeout_ms;
            async move { client.register_peer(request).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(())
}

/// Waits until the node reports `n` peers alive. It asks the node role for
/// its state counts rather than listing the peers over gRPC: a list of
/// 10,000 peers is a few MB of transient allocations, which the allocator
/// keeps and the memory scenario would count as the cost of monitoring.
pub async fn wait_all_alive(
    node: &mut crate::child::Helper,
    n: usize,
    patience: Duration,
) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    loop {
        let counts = node.ask("counts").await?;
        let alive = counts["alive"].as_u64().unwrap_or(0);
        if alive >= n as u64 {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < patience,
            "only {alive} of {n} peers alive after {patience:?} ({counts})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts responder helpers for `n` peers, `per_process` per helper.
pub async fn responders(
    n: usize,
    per_process: usize,
) -> anyhow::Result<(Vec<crate::child::Helper>, Vec<Vec<(u16, String)>>)> {
    responders_with(n, per_process, None).await
}

/// [`responders`], with the cluster key on or off for them alone.
pub async fn responders_with(
    n: usize,
    per_process: usize,
    keyed: Option<bool>,
) -> anyhow::Result<(Vec<crate::child::Helper>, Vec<Vec<(u16, String)>>)> {
    let mut helpers = Vec::new();
    let mut groups = Vec::new();
    let mut left = n;
    while left > 0 {
        let count = left.min(per_process);
        let h =
            crate::child::Helper::start_with(&["responders", "--count", &count.to_string()], keyed)
                .await?;
        let peers = h.ready["peers"]
            .as_array()
            .context("responder peers")?
            .iter()
            .filter_map(|p| {
                Some((
                    u16::try_from(p[0].as_u64()?).ok()?,
                    p[1].as_str()?.to_owned(),
                ))
            })
            .collect::<Vec<_>>();
        anyhow::ensure!(
            peers.len() == count,
            "responder started {} of {count}",
            peers.len()
        );
        groups.push(peers);
        helpers.push(h);
        left -= count;
    }
    Ok((helpers, groups))
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

/// Every PeerDown a node reports from now on, with when it came.
pub struct Downs(tokio::sync::mpsc::UnboundedReceiver<(String, std::time::Instant)>);

impl Downs {
    /// Starts watching `client`'s node.
    pub async fn watch(client: &heartbeater::HeartbeatClient) -> anyhow::Result<Self> {
        use futures_util::StreamExt;
        let mut events = client.watch_peers(false).await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(e)) = events.next().await {
                if e.kind == heartbeater::proto::PeerEventKind::PeerDown as i32
                    && tx.send((e.peer_id, std::time::Instant::now())).is_err()
                {
                    return;
                }
            }
        });
        Ok(Self(rx))
    }

    /// For each of `victims`, killed at `killed`, how many ms past `bound`
    /// it was declared down (`waited` for one never declared down), sorted;
    /// and how many PeerDowns were of anyone else, or came before the kill.
    pub fn score(
        &mut self,
        victims: &std::collections::HashSet<String>,
        killed: std::time::Instant,
        bound: Duration,
        waited: Duration,
    ) -> (Vec<u64>, u64) {
        let mut downs = std::collections::HashMap::new();
        let mut false_downs = 0u64;
        while let Ok((peer, at)) = self.0.try_recv() {
            if victims.contains(&peer) && at >= killed {
                downs.entry(peer).or_insert(at);
            } else {
                false_downs += 1;
            }
        }
        let mut over: Vec<u64> = victims
            .iter()
            .map(|v| match downs.get(v) {
                Some(at) => at.duration_since(killed).saturating_sub(bound).as_millis() as u64,
                None => waited.as_millis() as u64,
            })
            .collect();
        over.sort_unstable();
        (over, false_downs)
    }
}
