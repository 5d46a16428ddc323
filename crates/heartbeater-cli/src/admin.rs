//! The commands that talk to a running node: `register`, `deregister`,
//! `peers`, `watch`, `heartbeat`.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use heartbeater::{DeregisterPeerRequest, HeartbeatClient, HeartbeatMessage, RegisterPeerRequest};
use serde_json::json;

use crate::address::HostPort;
use crate::output;
use crate::ServerArgs;

fn client(args: &ServerArgs) -> anyhow::Result<HeartbeatClient> {
    let mut builder = HeartbeatClient::builder(args.server.host.clone(), args.server.port)
        .deadline(args.deadline);
    if let Some(tls) = args.security.tls()? {
        builder = builder.tls(tls);
    }
    if let Some(token) = args.security.token()? {
        builder = builder.token(token);
    }
    builder
        .build()
        .with_context(|| format!("--server {}", args.server))
}

/// A failed call, with what to try when the cause is likely the caller's
/// TLS or token settings.
fn explain(e: heartbeater::ClientError, args: &ServerArgs) -> anyhow::Error {
    use heartbeater::ClientError;
    let hint = match &e {
        ClientError::Unavailable { .. } if args.security.tls_ca.is_none() => Some(
            "if the node serves TLS, pass --tls-ca (and --tls-cert/--tls-key if it requires client certificates)",
        ),
        ClientError::Unavailable { .. } if args.security.tls_cert.is_none() => Some(
            "if the node requires client certificates (mutual TLS), pass --tls-cert and --tls-key",
        ),
        ClientError::Unauthenticated(_) if args.security.token_file.is_none() && args.security.token.is_none() => {
            Some("pass --token-file FILE or set HEARTBEATER_TOKEN")
        }
        _ => None,
    };
    match hint {
        Some(hint) => anyhow::anyhow!("{e} ({hint})"),
        None => e.into(),
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Options of `register`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  heartbeater register --peer-id 9a0e... --peer 127.0.0.1:8282 --freq 100ms
  heartbeater register --server 10.0.0.1:8181 --peer-id db-2 --peer db-2.internal:8181 --freq 250ms --max-missed 5 --rise 2
  heartbeater register --peer-id api-1 --peer 10.0.0.7:8181 --freq 100ms --detector phi")]
pub struct RegisterArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The peer's identity (for a Heartbeater node: the UUID `serve` prints).
    #[arg(long)]
    peer_id: String,
    /// Where the peer listens.
    #[arg(long, value_name = "HOST:PORT")]
    peer: HostPort,
    /// Time between heartbeats (1ms to 1h), e.g. 100ms, 2s.
    #[arg(long, value_parser = humantime::parse_duration)]
    freq: Duration,
    /// How long a reply is accepted [default: the frequency].
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Consecutive misses before the peer is unreachable [default: 3].
    #[arg(long)]
    max_missed: Option<u32>,
    /// The rule that convicts the peer: `count` (max-missed heartbeats) or
    /// `phi` (phi accrual) [default: the node's].
    #[arg(long, value_enum)]
    detector: Option<DetectorArg>,
    /// Phi accrual: the phi at which the peer is convicted (1 to 64)
    /// [default: 8].
    #[arg(long, value_name = "PHI")]
    phi_threshold: Option<f64>,
    /// Phi accrual: how much longer than usual a silence may be before it
    /// counts [default: one period].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    acceptable_pause: Option<Duration>,
    /// Phi accrual: the least deviation of the intervals between answers
    /// assumed [default: a quarter period].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    min_std_dev: Option<Duration>,
    /// Consecutive valid replies before an unreachable peer is alive again
    /// (1 to 100) [default: the node's, 1].
    #[arg(long, value_name = "N")]
    rise: Option<u32>,
    /// Print the answer as one JSON line.
    #[arg(long)]
    json: bool,
}

/// The rules `register --detector` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DetectorArg {
    /// max-missed consecutive heartbeats without a valid reply.
    Count,
    /// Phi accrual.
    Phi,
}

pub async fn register(args: RegisterArgs) -> anyhow::Result<()> {
    // Refuse nonsense before contacting anyone; the node checks again.
    heartbeater::DetectorConfig::new(args.freq, args.timeout, args.max_missed)?;
    let c = client(&args.server)?;
    let response = c
        .register_peer(RegisterPeerRequest {
            peer_id: args.peer_id.clone(),
            peer_host: args.peer.host.clone(),
            peer_port: u32::from(args.peer.port),
            heartbeat_freq_millis: millis(args.freq),
            timeout_millis: args.timeout.map(millis),
            max_missed: args.max_missed,
            detector: args.detector.map(|d| match d {
                DetectorArg::Count => heartbeater::proto::Detector::MissCount as i32,
                DetectorArg::Phi => heartbeater::proto::Detector::PhiAccrual as i32,
            }),
            phi_threshold: args.phi_threshold,
            acceptable_pause_millis: args.acceptable_pause.map(millis),
            min_std_dev_millis: args.min_std_dev.map(millis),
            rise: args.rise,
        })
        .await
        .map_err(|e| explain(e, &args.server))?;
    if args.json {
        println!(
            "{}",
            json!({"event": if response.updated {"updated"} else {"registered"}, "peer_id": args.peer_id,
                   "peer": args.peer.to_string(), "server_id": response.server_id,
                   "server_epoch": response.server_epoch, "timestamp": output::now_rfc3339()})
        );
    } else {
        println!(
            "{} peer {} at {} every {} on node {} (epoch {})",
            if response.updated {
                "updated"
            } else {
                "registered"
            },
            args.peer_id,
            args.peer,
            humantime::format_duration(args.freq),
            response.server_id,
            response.server_epoch
        );
    }
    Ok(())
}

/// Options of `deregister`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  heartbeater deregister --peer-id 9a0e...")]
pub struct DeregisterArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The id the peer was registered with.
    #[arg(long)]
    peer_id: String,
    /// Print the answer as one JSON line.
    #[arg(long)]
    json: bool,
}

pub async fn deregister(args: DeregisterArgs) -> anyhow::Result<()> {
    let c = client(&args.server)?;
    let response = c
        .deregister_peer(DeregisterPeerRequest {
            peer_id: args.peer_id.clone(),
        })
        .await
        .map_err(|e| explain(e, &args.server))?;
    if args.json {
        println!(
            "{}",
            json!({"event": "deregistered", "peer_id": args.peer_id, "server_id": response.server_id,
                   "server_epoch": response.server_epoch, "timestamp": output::now_rfc3339()})
        );
    } else {
        println!(
            "deregistered peer {} from node {}",
            args.peer_id, response.server_id
        );
    }
    Ok(())
}

/// Options of `peers`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  heartbeater peers
  heartbeater peers --watch            # refreshed every second, in place
  heartbeater peers --json | jq -r 'select(.state != \"ALIVE\") | .peer_id'")]
pub struct PeersArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// One JSON object per peer, one per line.
    #[arg(long)]
    json: bool,
    /// Refresh every INTERVAL until interrupted: in place on a terminal,
    /// as timestamped tables one after another in a pipe.
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "1s",
          value_parser = humantime::parse_duration)]
    watch: Option<Duration>,
}

pub async fn peers(args: PeersArgs) -> anyhow::Result<()> {
    let c = client(&args.server)?;
    let Some(every) = args.watch else {
        return show_peers(&c, &args, false).await;
    };
    if every < Duration::from_millis(100) {
        anyhow::bail!("--watch: refresh at most every 100ms");
    }
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let stop = crate::interrupted();
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            r = &mut stop => return r,
            _ = tick.tick() => {
                if tty {
                    // Home and clear: the table redraws in place.
                    print!("\x1b[H\x1b[2J");
                }
                println!("{}  peers of {}  (every {})", output::now_rfc3339(),
                    args.server.server, humantime::format_duration(every));
                show_peers(&c, &args, true).await?;
                if !tty {
                    println!();
                }
            }
        }
    }
}

async fn show_peers(
    c: &heartbeater::HeartbeatClient,
    args: &PeersArgs,
    watching: bool,
) -> anyhow::Result<()> {
    let response = c.list_peers().await.map_err(|e| explain(e, &args.server))?;
    if args.json {
        for p in &response.peers {
            println!("{}", output::peer_json(p));
        }
    } else if response.peers.is_empty() {
        println!("no peers registered on node {}", response.server_id);
    } else {
        print!(
            "{}",
            output::peers_table(&response.peers, output::colour(&std::io::stdout()))
        );
    }
    if watching {
        return Ok(());
    }
    if !response.quarantined.is_empty() {
        // On stderr, so a script reading the peers from stdout is unaffected,
        // but nobody running the command misses it.
        eprintln!(
            "warning: {} stored peer(s) quarantined: their records cannot be loaded, so they are not monitored; `heartbeater deregister <peer-id>` removes one",
            response.quarantined.len()
        );
        for q in &response.quarantined {
            eprintln!("  {}: {}", q.peer_id, q.reason);
        }
    }
    Ok(())
}

/// Options of `watch`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  heartbeater watch
  heartbeater watch --snapshot --json  # every peer first, then each event")]
pub struct WatchArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Start with one `Snapshot` line per registered peer.
    #[arg(long)]
    snapshot: bool,
    /// One JSON object per event, one per line.
    #[arg(long)]
    json: bool,
}

pub async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let colour = output::colour(&std::io::stdout());
    let c = client(&args.server)?;
    let mut events = c
        .watch_peers(args.snapshot)
        .await
        .map_err(|e| explain(e, &args.server))?;
    let stop = crate::interrupted();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = &mut stop => return r,
            item = events.next() => match item {
                Some(Ok(e)) => {
                    if args.json {
                        println!("{}", output::event_json(&e));
                    } else {
                        println!("{}", output::event_text(&e, colour));
                    }
                }
                Some(Err(e)) => return Err(e).context("watch ended"),
                None => anyhow::bail!("node {} closed the watch (stopping?)", args.server.server),
            }
        }
    }
}

/// Options of `heartbeat`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  heartbeater heartbeat --server 127.0.0.1:8181   # exit 0 when the node answers")]
pub struct HeartbeatArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The id to send as `client_id`.
    #[arg(long, default_value = "heartbeater-cli")]
    client_id: String,
    /// Print the answer as one JSON line.
    #[arg(long)]
    json: bool,
}

pub async fn heartbeat(args: HeartbeatArgs) -> anyhow::Result<()> {
    let c = client(&args.server)?;
    let started = Instant::now();
    let response = c
        .heartbeat(HeartbeatMessage {
            client_id: args.client_id,
            client_epoch: 0,
        })
        .await
        .map_err(|e| explain(e, &args.server))?;
    let rtt = started.elapsed();
    if args.json {
        println!(
            "{}",
            json!({"event": "heartbeat", "server_id": response.server_id, "server_epoch": response.server_epoch,
                   "rtt_micros": u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX), "timestamp": output::now_rfc3339()})
        );
    } else {
        println!(
            "identity {}  epoch {}  rtt {:.2}ms",
            response.server_id,
            response.server_epoch,
            rtt.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}
