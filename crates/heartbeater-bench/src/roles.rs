//! What a helper process does in each role. Each prints one JSON "ready"
//! line, answers commands read on stdin, and exits when stdin closes.

use std::path::PathBuf;
use std::pin::Pin;

use futures_util::Stream;
use heartbeater::proto::heartbeat_service_server::{HeartbeatService, HeartbeatServiceServer};
use heartbeater::proto::{
    DeregisterPeerRequest, DeregisterPeerResponse, HeartbeatMessage, HeartbeatResponse,
    ListPeersRequest, ListPeersResponse, PeerEvent, RegisterPeerRequest, RegisterPeerResponse,
    WatchPeersRequest,
};
use heartbeater::{HeartbeatServer, LatenessSnapshot};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// Set (by `--cluster-key`) for every process of a run whose nodes and
/// responders authenticate their datagrams with one fixed key.
pub const KEYED_ENV: &str = "HEARTBEATER_BENCH_KEYED";

/// The run's cluster keyring, when `--cluster-key` was given.
pub fn bench_keyring() -> anyhow::Result<Option<heartbeater::Keyring>> {
    if std::env::var_os(KEYED_ENV).is_none() {
        return Ok(None);
    }
    Ok(Some(heartbeater::Keyring::new(&[[0x5a_u8; 32]])?))
}

/// Reads command lines until stdin closes.
async fn commands(mut on: impl FnMut(&str) -> serde_json::Value) -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        println!("{}", on(line.trim()));
    }
    Ok(())
}

/// A Heartbeater node on 127.0.0.1:0 (in memory unless a data dir is given).
/// Commands: `counts` (peers per state), `mark` (start a lateness window),
/// `lateness` (the window's figures), `work` (heartbeats acknowledged, gRPC
/// heartbeats sent, peers declared down, heartbeats voided, pauses).
/// How a node role judges its peers (the accuracy scenario's detectors).
#[derive(Debug, Clone, Copy, Default)]
pub struct Judging {
    /// The local-pause guard off.
    pub pause_off: bool,
    /// Phi accrual by default.
    pub phi: bool,
    /// Indirect probes off.
    pub no_indirect: bool,
}

pub async fn node(
    data_dir: Option<PathBuf>,
    udp: bool,
    tls_dir: Option<PathBuf>,
    judging: Judging,
) -> anyhow::Result<()> {
    // The peer path is measured at 1 ms periods, registered over gRPC, far
    // past the default heartbeat budget on purpose: it finds the node's limit.
    // Registrations are measured as fast as they go for a whole window,
    // which on a fast machine writes past the default registry limit
    // (100,000); the limit guards a node in service, not this one.
    let mut builder = HeartbeatServer::builder()
        .server_port(0)
        .udp_heartbeats(udp)
        .network_heartbeat_budget(u64::MAX)
        .max_peers(usize::MAX);
    if judging.pause_off {
        builder = builder.pause_threshold(heartbeater::PauseThreshold::Off);
    }
    if judging.no_indirect {
        builder = builder.indirect_probes(0);
    }
    if judging.phi {
        builder =
            builder.default_detector(heartbeater::DefaultDetector::PhiAccrual { threshold: 8.0 });
    }
    let builder = match data_dir {
        Some(dir) => builder.data_dir(dir),
        None => builder.in_memory(),
    };
    let builder = match bench_keyring()? {
        Some(keyring) => builder.cluster_keys(keyring),
        None => builder,
    };
    let builder = match tls_dir {
        Some(dir) => builder.tls(heartbeater::TlsServerConfig::from_files(
            dir.join("cert.pem"),
            dir.join("key.pem"),
            None,
        )?),
        None => builder,
    };
    let server = builder.build()?;
    let addr = server.start().await?;
    println!(
        "{}",
        json!({"addr": addr.to_string(), "identity": server.identity()})
    );
    let mut mark: LatenessSnapshot = server.scheduler_lateness();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let answer = match line.trim() {
            "mark" => {
                mark = server.scheduler_lateness();
                json!({"ok": true})
            }
            "counts" => {
                let c = server.peer_counts().await;
                json!({"unknown": c.unknown, "alive": c.alive, "unreachable": c.unreachable})
            }
            "work" => {
                let m = server.metrics();
                json!({
                    "acked": m.datagram.acked + m.grpc.acked,
                    "sent_grpc": m.grpc.sent,
                    "peer_down": m.transitions.peer_down,
                    "voided_overloaded": server.pause_stats().voided_overloaded,
                    "pauses": server.pause_stats().pauses,
                    "dropped_on_receive": server.datagram_stats().dropped_on_receive,
                    "indirect_rounds": server.indirect_stats().rounds,
                    "indirect_kept": server.indirect_stats().convictions_prevented,
                    "timed_out": m.datagram.timed_out + m.grpc.timed_out,
                    "stale_pongs": server.datagram_stats().unmatched_pongs,
                })
            }
            "lateness" => {
                let window = server.scheduler_lateness().since(&mark);
                json!({
                    "count": window.count(),
                    "p50_us": window.quantile(0.5).as_micros() as u64,
                    "p99_us": window.quantile(0.99).as_micros() as u64,
                })
            }
            other => json!({"error": format!("unknown command {other:?}")}),
        };
        println!("{answer}");
    }
    server.stop().await?;
    Ok(())
}

/// The baseline server: answers `Heartbeat` with a response of the node's
/// size (a 36-byte id and an epoch) and does nothing else.
#[derive(Clone)]
pub struct Echo {
    pub identity: String,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<PeerEvent, Status>> + Send>>;

#[tonic::async_trait]
impl HeartbeatService for Echo {
    async fn heartbeat(
        &self,
        _: Request<HeartbeatMessage>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        Ok(Response::new(HeartbeatResponse {
            server_id: self.identity.clone(),
            server_epoch: 1,
        }))
    }
    async fn register_peer(
        &self,
        _: Request<RegisterPeerRequest>,
    ) -> Result<Response<RegisterPeerResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    async fn deregister_peer(
        &self,
        _: Request<DeregisterPeerRequest>,
    ) -> Result<Response<DeregisterPeerResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    async fn list_peers(
        &self,
        _: Request<ListPeersRequest>,
    ) -> Result<Response<ListPeersResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
    type WatchPeersStream = EventStream;
    async fn watch_peers(
        &self,
        _: Request<WatchPeersRequest>,
    ) -> Result<Response<EventStream>, Status> {
        Err(Status::unimplemented("echo"))
    }
}

/// Serves `Heartbeat` as `identity` over gRPC, and heartbeat datagrams on
/// the same port number, as a node does.
async fn serve_on_free_port(
    identity: String,
    keyring: Option<heartbeater::Keyring>,
) -> anyhow::Result<u16> {
    let (listener, udp) = loop {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        // The port may be taken for UDP; then take another.
        if let Ok(udp) = tokio::net::UdpSocket::bind(("127.0.0.1", port)).await {
            break (listener, udp);
        }
    };
    let port = listener.local_addr()?.port();
    tokio::spawn(answer_datagrams(udp, identity.clone(), keyring));
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HeartbeatServiceServer::new(Echo { identity }))
            .serve_with_incoming(incoming),
    );
    Ok(port)
}

async fn answer_datagrams(
    socket: tokio::net::UdpSocket,
    identity: String,
    keyring: Option<heartbeater::Keyring>,
) {
    let (mut buf, mut out) = (vec![0u8; 1024], Vec::new());
    while let Ok((n, from)) = socket.recv_from(&mut buf).await {
        if heartbeater::udp::answer(&buf[..n], &identity, 1, keyring.as_ref(), &mut out).is_ok() {
            // A full buffer drops the answer, as a real node would.
            let _ = socket.try_send_to(&out, from);
        }
    }
}

/// The baselines' servers: a plain tonic echo (the rpc baseline), and raw
/// UDP and TCP echoes (the loopback limit of the peer path), each on its
/// own OS thread or runtime task.
pub async fn echo() -> anyhow::Result<()> {
    let identity = heartbeater::Uuid::new_v4().to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HeartbeatServiceServer::new(Echo {
                identity: identity.clone(),
            }))
            .serve_with_incoming(incoming),
    );
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let udp_addr = udp.local_addr()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
    let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
    let tcp_addr = tcp.local_addr()?;
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in tcp.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_nodelay(true);
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    println!(
        "{}",
        json!({
            "addr": format!("127.0.0.1:{port}"),
            "identity": identity,
            "udp": udp_addr.to_string(),
            "tcp": tcp_addr.to_string(),
        })
    );
    commands(|_| json!({"ok": true})).await
}

/// `count` lightweight peers: each its own listening socket (TCP and UDP
/// on one port number) and identity, answering heartbeats as a node would.
pub async fn responders(count: usize) -> anyhow::Result<()> {
    let mut peers = Vec::with_capacity(count);
    let keyring = bench_keyring()?;
    for _ in 0..count {
        let identity = heartbeater::Uuid::new_v4().to_string();
        let port = serve_on_free_port(identity.clone(), keyring.clone()).await?;
        peers.push(json!([port, identity]));
    }
    println!("{}", json!({ "peers": peers }));
    commands(|_| json!({"ok": true})).await
}

/// `count` nodes in this process, each subscribed once to `topic` on the
/// publisher at `publisher`, counting the messages they receive.
/// Command: `received` (the total so far).
pub async fn subscribers(count: usize, publisher: String, topic: String) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let publisher: std::net::SocketAddr = publisher.parse()?;
    let received = Arc::new(AtomicU64::new(0));
    let mut nodes = Vec::new();
    let mut subs = Vec::new();
    for _ in 0..count {
        let node = HeartbeatServer::builder()
            .server_port(0)
            .in_memory()
            .build()?;
        node.start().await?;
        let counter = received.clone();
        let sub = node.subscribe(&topic, publisher, move |_: &str, _: &[u8]| {
            counter.fetch_add(1, Ordering::Relaxed);
        })?;
        subs.push(sub);
        nodes.push(node);
    }
    let start = std::time::Instant::now();
    while !subs.iter().all(|s| s.is_connected()) {
        anyhow::ensure!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "subscribers not connected within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    println!("{}", json!({"subscribed": count}));
    commands(|cmd| match cmd {
        "received" => json!({"received": received.load(Ordering::Relaxed)}),
        other => json!({"error": format!("unknown command {other:?}")}),
    })
    .await?;
    drop(subs);
    for node in nodes {
        node.stop().await?;
    }
    Ok(())
}

/// Which peers of an `addressed` responder stay silent: indexes from
/// `start`, `count` of them.
#[derive(Default)]
struct Silenced {
    start: std::sync::atomic::AtomicUsize,
    count: std::sync::atomic::AtomicUsize,
}

impl Silenced {
    fn covers(&self, i: usize) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let start = self.start.load(Relaxed);
        i >= start && i - start < self.count.load(Relaxed)
    }
}

/// Every peer of the scale scenario on one port: a ping to `127.x.y.z` is
/// answered as the peer registered at that address
/// ([`crate::scenarios::scale::peer_addr`]), from that address. The
/// socket is bound to every address and learns where each ping was sent
/// (`IP_PKTINFO`); pings from elsewhere than this machine are ignored.
/// Command: `silence START COUNT` (those peers stop answering; `COUNT` 0
/// ends it).
#[cfg(target_os = "linux")]
pub async fn addressed() -> anyhow::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;

    use nix::sys::socket::{setsockopt, sockopt};

    let socket = std::net::UdpSocket::bind(("0.0.0.0", 0))?;
    setsockopt(&socket, sockopt::Ipv4PacketInfo, &true)?;
    // Room for the replies' bursts: the node sends thousands at once.
    socket2::SockRef::from(&socket).set_recv_buffer_size(16 << 20)?;
    let port = socket.local_addr()?.port();
    let silenced = Arc::new(Silenced::default());
    let keyring = bench_keyring()?;
    std::thread::spawn({
        let silenced = silenced.clone();
        move || answer_addressed(&socket, &silenced, keyring.as_ref())
    });
    println!("{}", json!({ "port": port }));
    commands(|cmd| {
        let parts: Vec<&str> = cmd.split_whitespace().collect();
        match parts.as_slice() {
            ["silence", start, count] => match (start.parse(), count.parse()) {
                (Ok(start), Ok(count)) => {
                    silenced.count.store(0, Relaxed);
                    silenced.start.store(start, Relaxed);
                    silenced.count.store(count, Relaxed);
                    json!({"ok": true})
                }
                _ => json!({"error": "silence START COUNT"}),
            },
            _ => json!({"error": format!("unknown command {cmd:?}")}),
        }
    })
    .await
}

#[cfg(target_os = "linux")]
fn answer_addressed(
    socket: &std::net::UdpSocket,
    silenced: &Silenced,
    keyring: Option<&heartbeater::Keyring>,
) {
    use std::io::{IoSlice, IoSliceMut};
    use std::os::fd::AsRawFd;

    use nix::libc;
    use nix::sys::socket::{
        recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn,
    };

    use crate::scenarios::scale::{peer_id, peer_index};

    let fd = socket.as_raw_fd();
    let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
    let (mut buf, mut out) = (vec![0u8; 2048], Vec::new());
    loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let Ok(msg) = recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())
        else {
            continue;
        };
        let (n, from) = (msg.bytes, msg.address);
        let mut info = None;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::Ipv4PacketInfo(i) = c {
                    info = Some(i);
                }
            }
        }
        let (Some(from), Some(mut info)) = (from, info) else {
            continue;
        };
        if !from.ip().is_loopback() {
            continue;
        }
        let to = std::net::Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
        let Some(i) = peer_index(to) else {
            continue;
        };
        if silenced.covers(i) {
            continue;
        }
        if heartbeater::udp::answer(&buf[..n], &peer_id(i), 1, keyring, &mut out).is_err() {
            continue;
        }
        // From the address the ping went to, as that peer would answer.
        info.ipi_spec_dst = info.ipi_addr;
        info.ipi_ifindex = 0;
        let _ = sendmsg(
            fd,
            &[IoSlice::new(&out)],
            &[ControlMessage::Ipv4PacketInfo(&info)],
            MsgFlags::MSG_DONTWAIT,
            Some(&from),
        );
    }
}

/// The scale scenario's responder needs `IP_PKTINFO`, which only Linux has
/// here.
#[cfg(not(target_os = "linux"))]
pub async fn addressed() -> anyhow::Result<()> {
    anyhow::bail!("the scale scenario's responder runs on Linux only")
}
