//! `heartbeater demo`: a small cluster in this process, all-to-all, with one
//! node stopped and started again, to show what Heartbeater does and how
//! fast. Real nodes on loopback (UDP and gRPC), each with its own RocksDB
//! in a temporary directory, so the restarted node comes back with its
//! identity and a higher epoch, as after a crash.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use futures_util::StreamExt;
use heartbeater::proto::RegisterPeerRequest;
use heartbeater::{HeartbeatServer, PeerEvent, PeerEventKind, PeerState};
use tokio::sync::mpsc;

use crate::address::HostPort;
use crate::output::outln;

/// Options of `demo`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  heartbeater demo
  heartbeater demo --nodes 3 --freq 200ms
  heartbeater demo --http-listen 127.0.0.1:9181   # watch node-1's status page meanwhile")]
pub struct DemoArgs {
    /// Nodes in the cluster (3 to 9).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(3..=9))]
    nodes: u8,
    /// Heartbeat period of every registration (10ms to 1s).
    #[arg(long, default_value = "100ms",
          value_parser = crate::duration::within(Duration::from_millis(10), Some(Duration::from_secs(1))))]
    freq: Duration,
    /// Serve node-1's status page, metrics and API here while the demo runs.
    #[arg(long, value_name = "HOST:PORT")]
    http_listen: Option<HostPort>,
    /// How long to watch the healthy cluster before the kill.
    #[arg(long, default_value = "3s", value_parser = crate::duration::parse)]
    settle: Duration,
}

/// A temporary directory removed on drop (a failed demo included).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Node {
    name: String,
    identity: String,
    port: u16,
    dir: PathBuf,
    server: Arc<HeartbeatServer>,
}

/// Builds and starts a node, its events forwarded from before the start: a
/// restarted node reaches its restored peers within a millisecond on
/// loopback, before any later subscription would hear it.
async fn start_node(
    dir: &std::path::Path,
    port: u16,
    index: usize,
    tx: &mpsc::UnboundedSender<Seen>,
) -> anyhow::Result<Arc<HeartbeatServer>> {
    let server = HeartbeatServer::builder()
        .server_host("127.0.0.1")
        .server_port(port)
        .data_dir(dir)
        .build_async()
        .await?;
    forward(index, &server, tx.clone());
    server.start().await?;
    Ok(Arc::new(server))
}

/// What the monitors reported, and the live view of it.
struct View {
    names: HashMap<String, usize>,
    node_names: Vec<String>,
    /// `states[monitor][peer]`.
    states: Vec<Vec<Option<PeerState>>>,
    tty: bool,
    colour: bool,
    drawn_lines: usize,
    started: Instant,
}

impl View {
    fn name(&self, identity: &str) -> String {
        self.names
            .get(identity)
            .map_or(identity, |&i| self.node_names[i].as_str())
            .to_string()
    }

    /// Prints `line` above the live table (or as a plain line in a pipe).
    fn say(&mut self, line: &str) {
        let mut out = std::io::stdout().lock();
        if self.tty && self.drawn_lines > 0 {
            // Back over the table, clear it, write the line, redraw.
            let _ = write!(out, "\x1b[{}A\x1b[J", self.drawn_lines);
            self.drawn_lines = 0;
        }
        let _ = writeln!(
            out,
            "{:>7.3}s  {line}",
            self.started.elapsed().as_secs_f64()
        );
        drop(out);
        self.draw();
    }

    fn on_event(&mut self, monitor: usize, e: &PeerEvent) {
        if let Some(&peer) = self.names.get(&e.peer_id) {
            self.states[monitor][peer] = Some(e.state);
        }
        let what = match &e.kind {
            PeerEventKind::PeerUp => "is UP".to_string(),
            PeerEventKind::PeerDown => "is DOWN".to_string(),
            PeerEventKind::Restarted { previous } => format!(
                "RESTARTED (epoch {previous} -> {})",
                e.epoch.map_or("?".into(), |x| x.to_string())
            ),
            PeerEventKind::IdentityMismatch { observed } => {
                format!("answers with another identity {observed}")
            }
            PeerEventKind::Registered => return,
            PeerEventKind::Deregistered => "deregistered".to_string(),
            PeerEventKind::ReachedIndirectly { via } => format!(
                "is reached only through {}",
                via.as_deref().unwrap_or("another node")
            ),
        };
        let line = format!(
            "{:<7} sees {:<7} {what}",
            self.node_names[monitor],
            self.name(&e.peer_id)
        );
        self.say(&line);
    }

    fn cell(&self, state: Option<PeerState>) -> String {
        let (text, code) = match state {
            Some(PeerState::Alive) => ("ALIVE", "32"),
            Some(PeerState::Unreachable) => ("DOWN", "31;1"),
            Some(PeerState::Unknown) | None => ("-", "2"),
        };
        let padded = format!("{text:<8}");
        if self.colour {
            format!("\x1b[{code}m{padded}\x1b[0m")
        } else {
            padded
        }
    }

    /// The table of what each monitor thinks of each peer, in place.
    fn draw(&mut self) {
        if !self.tty {
            return;
        }
        let mut out = String::new();
        out.push_str(&format!("{:<9}", "sees ->"));
        for n in &self.node_names {
            out.push_str(&format!("{n:<8}"));
        }
        out.push('\n');
        for (m, row) in self.states.iter().enumerate() {
            out.push_str(&format!("{:<9}", self.node_names[m]));
            for (p, s) in row.iter().enumerate() {
                if m == p {
                    out.push_str(&format!("{:<8}", ""));
                } else {
                    out.push_str(&self.cell(*s));
                }
            }
            out.push('\n');
        }
        let mut stdout = std::io::stdout().lock();
        if self.drawn_lines > 0 {
            let _ = write!(stdout, "\x1b[{}A\x1b[J", self.drawn_lines);
        }
        let _ = write!(stdout, "{out}");
        let _ = stdout.flush();
        self.drawn_lines = self.states.len() + 1;
    }
}

type Seen = (usize, PeerEvent);

/// Forwards every event of `server` (monitor `index`) to `tx`.
fn forward(index: usize, server: &HeartbeatServer, tx: mpsc::UnboundedSender<Seen>) {
    let mut events = server.events();
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            if tx.send((index, e)).is_err() {
                return;
            }
        }
    });
}

/// The events of every monitor as they come, shown on the view and kept.
struct Watcher {
    rx: mpsc::UnboundedReceiver<Seen>,
    view: View,
    seen: Vec<Seen>,
}

impl Watcher {
    /// Waits until `done` holds for what was seen, showing events
    /// meanwhile; false at `deadline`.
    async fn until(&mut self, deadline: Duration, mut done: impl FnMut(&[Seen]) -> bool) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        while !done(&self.seen) {
            match tokio::time::timeout_at(until, self.rx.recv()).await {
                Ok(Some(s)) => {
                    self.view.on_event(s.0, &s.1);
                    self.seen.push(s);
                }
                Ok(None) | Err(_) => return done(&self.seen),
            }
        }
        true
    }

    /// Shows what happens for `d`.
    async fn show(&mut self, d: Duration) {
        self.until(d, |_| false).await;
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let n = usize::from(args.nodes);
    let nonce = u64::from(std::process::id())
        ^ SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos().into());
    let tmp = TempDir(std::env::temp_dir().join(format!("heartbeater-demo-{nonce:x}")));
    std::fs::create_dir_all(&tmp.0)
        .with_context(|| format!("cannot create {}", tmp.0.display()))?;

    outln!(
        "Heartbeater demo: {n} nodes on 127.0.0.1, each heartbeating every other one every {}.",
        crate::duration::format(args.freq)
    );
    outln!(
        "Each node keeps its registry, identity and epoch in its own RocksDB under {}.",
        tmp.0.display()
    );
    let (tx, rx) = mpsc::unbounded_channel();
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let dir = tmp.0.join(format!("node-{}", i + 1));
        let server = start_node(&dir, 0, i, &tx).await?;
        let port = server.local_addr().map_or(0, |a| a.port());
        nodes.push(Node {
            name: format!("node-{}", i + 1),
            identity: server.identity(),
            port,
            dir,
            server,
        });
    }
    let http = match &args.http_listen {
        Some(at) => Some(
            async {
                let listener = crate::http::HttpServer::bind(at).await?;
                crate::http::HttpServer::start(listener, nodes[0].server.clone(), 100).await
            }
            .await
            .with_context(|| format!("cannot serve HTTP on {at}"))?,
        ),
        None => None,
    };
    if let Some(h) = &http {
        outln!("node-1's status page: http://{}/", h.local_addr());
    }

    let freq_ms = i64::try_from(args.freq.as_millis()).unwrap_or(1000);
    let t0 = Instant::now();
    for monitor in &nodes {
        for peer in nodes.iter().filter(|p| p.identity != monitor.identity) {
            monitor
                .server
                .register_peer(RegisterPeerRequest {
                    peer_id: peer.identity.clone(),
                    peer_host: "127.0.0.1".into(),
                    peer_port: u32::from(peer.port),
                    heartbeat_freq_millis: freq_ms,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("registering {} on {}", peer.name, monitor.name))?;
        }
    }
    let bound = nodes[0]
        .server
        .peers()
        .await
        .first()
        .map(|p| p.detector)
        .context("no registration")?;
    let links = n * (n - 1);
    outln!(
        "{links} registrations. A node is declared DOWN after {} missed heartbeats in a row, \
         at most {} ms after its last answer ({} x {} ms + a {} ms timeout).",
        bound.max_missed,
        ms(bound.detection_bound()),
        bound.max_missed,
        ms(bound.heartbeat_freq),
        ms(bound.timeout),
    );
    outln!();

    let view = View {
        names: nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.identity.clone(), i))
            .collect(),
        node_names: nodes.iter().map(|n| n.name.clone()).collect(),
        states: vec![vec![None; n]; n],
        tty,
        colour: crate::output::colour(&std::io::stdout()),
        drawn_lines: 0,
        started: Instant::now(),
    };
    let mut w = Watcher {
        rx,
        view,
        seen: Vec::new(),
    };
    w.view.draw();
    let mut failures: Vec<String> = Vec::new();

    // 1. Every link comes up.
    let up = |seen: &[Seen]| {
        seen.iter()
            .filter(|(_, e)| matches!(e.kind, PeerEventKind::PeerUp))
            .count()
            >= links
    };
    if w.until(Duration::from_secs(10), up).await {
        w.view.say(&format!(
            "all {links} links ALIVE after {} ms",
            ms(t0.elapsed())
        ));
    } else {
        failures.push("not every link came up within 10 s".to_string());
    }
    w.show(args.settle).await;

    // 2. Kill one node: it stops answering, without a word to anyone.
    let victim = n / 2;
    let victim_id = nodes[victim].identity.clone();
    let victim_name = nodes[victim].name.clone();
    let old_epoch = nodes[victim].server.epoch();
    w.view.say(&format!(
        "killing {victim_name}: it stops answering heartbeats, nobody is told"
    ));
    let killed_at = SystemTime::now();
    nodes[victim].server.stop().await?;
    let mark = w.seen.len();
    let downs = |seen: &[Seen]| {
        seen[mark..]
            .iter()
            .filter(|(m, e)| {
                *m != victim && e.peer_id == victim_id && matches!(e.kind, PeerEventKind::PeerDown)
            })
            .count()
            >= n - 1
    };
    let waited = bound.detection_bound() + Duration::from_secs(3);
    w.until(waited, downs).await;
    let mut latencies = Vec::new();
    for (m, e) in &w.seen[mark..] {
        if *m != victim && e.peer_id == victim_id && matches!(e.kind, PeerEventKind::PeerDown) {
            let took = e.timestamp.duration_since(killed_at).unwrap_or_default();
            latencies.push((*m, took));
        }
    }
    let bound_ms = ms(bound.detection_bound());
    // The bound runs from the last answer, which came before the kill; the
    // event's timestamp is taken after the monitor's scheduler ran, so a
    // loaded machine may add a few milliseconds: counted as a failure only
    // past that slack.
    let slack = Duration::from_millis(100);
    for (m, took) in &latencies {
        let within = *took <= bound.detection_bound();
        w.view.say(&format!(
            "{:<7} detected {victim_name} DOWN {} ms after the kill (bound {bound_ms} ms){}",
            w.view.node_names[*m],
            ms(*took),
            if within { "" } else { "  <- past the bound" }
        ));
        if *took > bound.detection_bound() + slack {
            failures.push(format!(
                "{} detected the kill after {} ms, past the {bound_ms} ms bound",
                w.view.node_names[*m],
                ms(*took)
            ));
        }
    }
    if latencies.len() < n - 1 {
        failures.push(format!(
            "only {} of {} nodes reported {victim_name} DOWN",
            latencies.len(),
            n - 1
        ));
    }

    // 3. Restart it from its data directory: same identity, higher epoch.
    w.show(Duration::from_secs(1)).await;
    w.view.say(&format!(
        "restarting {victim_name} from its data directory (same identity, epoch {old_epoch} -> next)"
    ));
    let restarted = start_node(&nodes[victim].dir, nodes[victim].port, victim, &tx)
        .await
        .with_context(|| format!("restarting {victim_name}"))?;
    let new_epoch = restarted.epoch();
    w.view.say(&format!(
        "{victim_name} is back: identity {}, epoch {new_epoch}, {} peers restored from its registry",
        restarted.identity(),
        restarted.peers().await.len()
    ));
    nodes[victim].server = restarted;
    let mark = w.seen.len();
    let back = |seen: &[Seen]| {
        let from_others = |kind: fn(&PeerEventKind) -> bool| {
            seen[mark..]
                .iter()
                .filter(|(m, e)| *m != victim && e.peer_id == victim_id && kind(&e.kind))
                .count()
        };
        from_others(|k| matches!(k, PeerEventKind::Restarted { .. })) >= n - 1
            && from_others(|k| matches!(k, PeerEventKind::PeerUp)) >= n - 1
    };
    if !w.until(Duration::from_secs(10), back).await {
        failures.push(format!(
            "not every node reported {victim_name} Restarted and then UP"
        ));
    }
    let its_view = |seen: &[Seen]| {
        seen[mark..]
            .iter()
            .filter(|(m, e)| *m == victim && matches!(e.kind, PeerEventKind::PeerUp))
            .count()
            >= n - 1
    };
    if !w.until(Duration::from_secs(5), its_view).await {
        failures.push(format!(
            "{victim_name} did not see its {} restored peers UP",
            n - 1
        ));
    }
    // Settle, and show that nothing flaps.
    let quiet = w.seen.len();
    w.show(Duration::from_secs(1)).await;
    let flaps = w.seen[quiet..]
        .iter()
        .filter(|(_, e)| matches!(e.kind, PeerEventKind::PeerDown))
        .count();
    if flaps > 0 {
        failures.push(format!("{flaps} PeerDown after the cluster healed"));
    }

    if let Some(h) = http {
        h.stop().await;
    }
    for node in &nodes {
        let _ = node.server.stop().await;
    }
    outln!();
    if failures.is_empty() {
        let worst = latencies.iter().map(|(_, d)| ms(*d)).max().unwrap_or(0);
        outln!(
            "OK: every node detected the kill within the {bound_ms} ms bound (slowest {worst} ms), \
             saw the restart (epoch {old_epoch} -> {new_epoch}) and the node UP again; no false alarm."
        );
        Ok(())
    } else {
        for f in &failures {
            outln!("MISSING: {f}");
        }
        anyhow::bail!("the demo did not see every expected transition")
    }
}
