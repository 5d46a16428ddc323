//! `peer-path`: heartbeats a node gets acknowledged per second by its peers
//! at saturation, over the path its scheduler really uses (datagrams, or
//! gRPC with `--no-udp` as a second figure). Baselines in the same run:
//! unary tonic calls at 64 in flight (the ratio), and raw UDP and TCP
//! ping-pong at 64 in flight (the loopback limit).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use heartbeater::{HeartbeatClient, RegisterPeerRequest};

use super::{median, node_client, responders, rpc, wait_all_alive, Settings};
use crate::child::Helper;
use crate::report::Row;

/// Peers at 1 ms each: an offered load far above what two cores can carry.
const PEERS: usize = 256;
/// Size of a heartbeat datagram with a 36-byte identity (a ping is padded
/// to the size of its pong; 20 bytes more with a cluster key).
const MESSAGE: usize = 84;
const IN_FLIGHT: usize = 64;

/// Registers `peers` at 1 ms with the longest timeout that allows and a
/// miss count no overload reaches: a schedule for throughput, not for the
/// detector.
pub(crate) async fn register_fast(
    client: &HeartbeatClient,
    peers: &[(u16, String)],
) -> anyhow::Result<()> {
    for (port, id) in peers {
        client
            .register_peer(RegisterPeerRequest {
                peer_id: id.clone(),
                peer_host: "127.0.0.1".into(),
                peer_port: u32::from(*port),
                heartbeat_freq_millis: 1,
                // The longest timeout a 1 ms period allows (7 periods):
                // this measures throughput, not the detector.
                timeout_millis: Some(7),
                max_missed: Some(1000),
                ..Default::default()
            })
            .await?;
    }
    Ok(())
}

async fn acked(client: &HeartbeatClient) -> anyhow::Result<u64> {
    Ok(client
        .list_peers()
        .await?
        .peers
        .iter()
        .map(|p| p.heartbeats_acked)
        .sum())
}

/// Acknowledged heartbeats per second of a node monitoring `peers`.
async fn node_acks(peers: &[(u16, String)], udp: bool, window: Duration) -> anyhow::Result<f64> {
    let args: &[&str] = if udp {
        &["node"]
    } else {
        &["node", "--no-udp"]
    };
    let mut node = Helper::start(args).await?;
    let client = node_client(node.ready["addr"].as_str().unwrap_or_default())?;
    register_fast(&client, peers).await?;
    let settled = wait_all_alive(&mut node, peers.len(), Duration::from_secs(60)).await;
    match (settled, udp) {
        (Ok(()), _) => {}
        (Err(e), true) => return Err(e),
        // Over gRPC, 256 peers at 1 ms with 7 ms timeouts are far past what
        // the path carries: some peers time out for good. What it acks
        // while trying is still its throughput.
        (Err(e), false) => eprintln!("gRPC path: {e:#}; measuring anyway"),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (a0, t0) = (acked(&client).await?, Instant::now());
    tokio::time::sleep(window).await;
    let (a1, t1) = (acked(&client).await?, Instant::now());
    Ok((a1 - a0) as f64 / (t1 - t0).as_secs_f64())
}

/// Round trips per second of raw datagrams, `IN_FLIGHT` outstanding.
fn udp_pingpong(addr: &str, window: Duration) -> anyhow::Result<f64> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(addr)?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let msg = [7u8; MESSAGE];
    let mut buf = [0u8; 2048];
    for _ in 0..IN_FLIGHT {
        socket.send(&msg)?;
    }
    let end = Instant::now() + window;
    let mut n = 0u64;
    while Instant::now() < end {
        match socket.recv(&mut buf) {
            Ok(_) => n += 1,
            // A datagram lost on a full buffer: put another in flight.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
        socket.send(&msg)?;
    }
    Ok(n as f64 / window.as_secs_f64())
}

/// Round trips per second of fixed-size messages over one TCP connection,
/// `IN_FLIGHT` outstanding.
fn tcp_pingpong(addr: &str, window: Duration) -> anyhow::Result<f64> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let msg = [7u8; MESSAGE];
    for _ in 0..IN_FLIGHT {
        stream.write_all(&msg)?;
    }
    let end = Instant::now() + window;
    let mut n = 0u64;
    let mut buf = [0u8; MESSAGE];
    while Instant::now() < end {
        stream.read_exact(&mut buf)?;
        n += 1;
        stream.write_all(&msg)?;
    }
    Ok(n as f64 / window.as_secs_f64())
}

pub async fn run(s: &Settings) -> anyhow::Result<Vec<Row>> {
    let (_responders, groups) = responders(PEERS, PEERS).await?;
    let peers: Vec<(u16, String)> = groups.into_iter().flatten().collect();
    let echo = Helper::start(&["echo"]).await?;
    let echo_addr = echo.ready["addr"].as_str().unwrap_or_default().to_owned();
    let udp_addr = echo.ready["udp"].as_str().context("echo udp")?.to_owned();
    let tcp_addr = echo.ready["tcp"].as_str().context("echo tcp")?.to_owned();

    let (mut ours, mut grpc_path, mut unary) = (Vec::new(), Vec::new(), Vec::new());
    let (mut udp, mut tcp) = (Vec::new(), Vec::new());
    for _ in 0..s.rounds() {
        unary.push(rpc::throughput(&echo_addr, IN_FLIGHT, s.window()).await?);
        ours.push(node_acks(&peers, true, s.window()).await?);
        grpc_path.push(node_acks(&peers, false, s.window()).await?);
        let (u, w) = (udp_addr.clone(), s.window());
        udp.push(tokio::task::spawn_blocking(move || udp_pingpong(&u, w)).await??);
        let (t, w) = (tcp_addr.clone(), s.window());
        tcp.push(tokio::task::spawn_blocking(move || tcp_pingpong(&t, w)).await??);
    }
    let unary = median(unary);
    const BASELINE: &str = "unary tonic c64";
    Ok(vec![
        Row::new(
            "peer-path",
            "acks_per_s",
            median(ours),
            "acks/s",
            "ratio >= 5",
        )
        .against(BASELINE, unary),
        Row::new(
            "peer-path",
            "acks_per_s_grpc_path",
            median(grpc_path),
            "acks/s",
            "-",
        )
        .against(BASELINE, unary),
        Row::new(
            "peer-path",
            "udp_pingpong_per_s",
            median(udp),
            "round trips/s",
            "loopback limit",
        ),
        Row::new(
            "peer-path",
            "tcp_pingpong_per_s",
            median(tcp),
            "round trips/s",
            "loopback limit",
        ),
    ])
}
