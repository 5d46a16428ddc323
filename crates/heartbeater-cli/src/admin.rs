//! The commands that talk to a running node: `register`, `deregister`,
//! `peers`, `watch`, `heartbeat`.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use heartbeater::{DeregisterPeerRequest, HeartbeatClient, HeartbeatMessage, RegisterPeerRequest};
use serde_json::json;

use crate::address::HostPort;
use crate::output::{self, out, outln};
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

/// A failed call in the caller's words, with what to change when the
/// cause is likely the command line: the port, TLS, the certificate, the
/// token. A TLS hint only where TLS can be the cause.
fn explain(e: heartbeater::ClientError, args: &ServerArgs) -> anyhow::Error {
    use heartbeater::{ClientError, Unreachable};
    let security = &args.security;
    let token = security.token_file.is_some() || security.token.is_some();
    let hint = match &e {
        ClientError::Unavailable { reason, .. } => match reason {
            Unreachable::NotGrpc => Some(http_port_hint(&args.server)),
            Unreachable::TlsRequired => {
                Some("pass --tls-ca FILE, the CA that issued the node's certificate".into())
            }
            Unreachable::NotTls => Some("drop --tls-ca: the node serves plain text".into()),
            Unreachable::UntrustedCertificate => {
                Some("--tls-ca must be the CA that issued the node's certificate".into())
            }
            Unreachable::ClientCertificateRequired => Some("pass --tls-cert and --tls-key".into()),
            Unreachable::ClientCertificateRejected => Some(
                "--tls-cert must be issued by a CA the node trusts (its --tls-client-ca)".into(),
            ),
            // A connection closed at once: a node serving TLS does that too.
            Unreachable::Other if security.tls_ca.is_none() => {
                Some("if the node serves TLS, pass --tls-ca".into())
            }
            _ => None,
        },
        ClientError::Unauthenticated(detail) if token => {
            return anyhow::anyhow!(
                "the node refused the token ({detail}); pass one of the node's --auth-token-file"
            );
        }
        ClientError::Unauthenticated(detail) => {
            return anyhow::anyhow!(
                "the node requires a token for this call ({detail}); pass --token-file FILE or set HEARTBEATER_TOKEN"
            );
        }
        _ => None,
    };
    match hint {
        Some(hint) => anyhow::anyhow!("{e}; {hint}"),
        None => e.into(),
    }
}

/// For a port that answered HTTP: the node's HTTP listener is by default
/// its gRPC port + 1000, and mistaking one for the other is the likely slip.
fn http_port_hint(server: &HostPort) -> String {
    match server.port.checked_sub(1000).filter(|p| *p > 0) {
        Some(grpc) => format!(
            "is it the node's HTTP port? gRPC is 1000 below it by default: --server {}",
            HostPort {
                host: server.host.clone(),
                port: grpc
            }
        ),
        None => format!(
            "is it the node's HTTP port? gRPC is on {} by default",
            heartbeater::DEFAULT_PORT
        ),
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Options of `register`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  heartbeater register --peer-id 9a0e4c2b-6d1f-4e8a-b3c5-7f2d1e0a9b84 --peer 127.0.0.1:8282 --freq 100ms
  heartbeater register --server 10.0.0.1:8181 --peer-id db-2 --peer db-2.internal:8181 --freq 250ms --max-missed 5 --rise 2
      (db-2: a node started with `serve --node-id db-2`)
  heartbeater register --peer-id api-1 --peer 10.0.0.7:8181 --freq 100ms --detector phi")]
pub struct RegisterArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The peer's identity: the whole UUID `serve` prints on its `identity`
    /// line (any case), or the name it was started with (`--node-id`).
    #[arg(long, value_parser = peer_id)]
    peer_id: String,
    /// Where the peer listens.
    #[arg(long, value_name = "HOST:PORT")]
    peer: HostPort,
    /// Time between heartbeats (1ms to 1h), e.g. 100ms, 2s.
    #[arg(long, value_parser = crate::duration::parse_positive)]
    freq: Duration,
    /// How long a reply is accepted [default: the frequency].
    #[arg(long, value_parser = crate::duration::parse_positive)]
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
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    acceptable_pause: Option<Duration>,
    /// Phi accrual: the least deviation of the intervals between answers
    /// assumed [default: a quarter period].
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse_positive)]
    min_std_dev: Option<Duration>,
    /// Consecutive valid replies before an unreachable peer is alive again
    /// (1 to 100) [default: the node's, 1].
    #[arg(long, value_name = "N")]
    rise: Option<u32>,
    /// Do not wait (up to 1s) to say whether the peer answers, and as whom.
    #[arg(long)]
    no_wait: bool,
    /// Print the answer as one JSON line.
    #[arg(long)]
    json: bool,
}

/// `--peer-id` in canonical form: an id no node can answer with would
/// stay UNREACHABLE for ever, so it is a usage error.
fn peer_id(text: &str) -> Result<String, String> {
    heartbeater::identity::canonical_identity(text).map_err(|e| e.to_string())
}

/// How long `register` waits for the peer's first answer: a node on a
/// reachable host answers its first heartbeat within milliseconds, and a
/// script registering many peers pays this only for silent ones.
const ANSWER_WAIT: Duration = Duration::from_secs(1);

/// What the registering node heard from the peer right after `register`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// Replies with the registered identity: the peer is `ALIVE`.
    Alive,
    /// Replies carry this other identity; they will never count.
    AnswersAs(String),
    /// Nothing decisive within [`ANSWER_WAIT`].
    Silent,
}

/// The first decisive word about `peer_id`, from `events` (opened before
/// the registration, so none is missed) until [`ANSWER_WAIT`] has passed.
///
/// A registration that updated a known peer carries its state over, so
/// that state says nothing about the new address: then the peer's counters
/// are read right after the registration and again at the end, and only
/// replies that came in between count (a changed registration heartbeats at
/// once, and replies to heartbeats sent before it no longer count).
async fn first_answer(
    c: &HeartbeatClient,
    mut events: impl futures_util::Stream<Item = Result<heartbeater::proto::PeerEvent, heartbeater::ClientError>>
        + Unpin,
    peer_id: &str,
    updated: bool,
) -> Answer {
    use heartbeater::proto::{PeerEventKind, PeerState};
    let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
    let status = || async {
        tokio::time::timeout_at(deadline, c.list_peers())
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|r| r.peers.into_iter().find(|p| p.peer_id == peer_id))
    };
    let before = if updated { status().await } else { None };
    loop {
        let e = match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(Ok(e))) => e,
            _ => break,
        };
        if e.peer_id != peer_id {
            continue;
        }
        match PeerEventKind::try_from(e.kind) {
            Ok(PeerEventKind::IdentityMismatch) => return Answer::AnswersAs(e.observed_id),
            // Misses: whether any reply came from someone else, the
            // status tells.
            Ok(PeerEventKind::PeerDown) => break,
            // Replies, not the `Registered` event, whose state an updated
            // peer carries over from its old address.
            Ok(PeerEventKind::PeerUp | PeerEventKind::Restarted)
                if e.state == PeerState::Alive as i32 =>
            {
                return Answer::Alive
            }
            _ => {}
        }
    }
    // One more look, with a moment of its own.
    let after = tokio::time::timeout(ANSWER_WAIT, c.list_peers())
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|r| r.peers.into_iter().find(|p| p.peer_id == peer_id));
    let Some(after) = after else {
        return Answer::Silent;
    };
    if let Some(before) = &before {
        if after.heartbeats_acked > before.heartbeats_acked && after.missed == 0 {
            return Answer::Alive;
        }
    }
    if let Some(id) = after.answers_as {
        return Answer::AnswersAs(id);
    }
    match before {
        // Registered again unchanged, with no heartbeat due since: the
        // state it had still stands.
        Some(before)
            if after.heartbeats_sent == before.heartbeats_sent
                && after.state == PeerState::Alive as i32 =>
        {
            Answer::Alive
        }
        _ => Answer::Silent,
    }
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
    heartbeater::DetectorConfig::new(args.freq, args.timeout, args.max_missed)
        .map_err(|e| crate::UsageError(e.to_string()))?;
    let c = client(&args.server)?;
    // Opened before the registration, so that no event about the peer can
    // fall between the two; a failure is told only if the registration
    // itself succeeds (its own error says more).
    let events = if args.no_wait {
        None
    } else {
        Some(c.watch_peers(false).await)
    };
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
    // Nodes older than the field leave it empty; they stored the id as sent.
    let peer_id = if response.peer_id.is_empty() {
        args.peer_id.clone()
    } else {
        response.peer_id.clone()
    };
    if !args.json {
        outln!(
            "{} peer {} at {} every {} on node {} (epoch {})",
            if response.updated {
                "updated"
            } else {
                "registered"
            },
            output::untrusted(&peer_id),
            args.peer,
            crate::duration::format(args.freq),
            output::untrusted(&response.server_id),
            response.server_epoch
        );
    }
    let answer = match events {
        Some(Ok(events)) => {
            let events = Box::pin(events);
            Some(first_answer(&c, events, &peer_id, response.updated).await)
        }
        Some(Err(e)) => {
            eprintln!("warning: cannot follow the peer's first heartbeats ({e}); `heartbeater peers` shows whether it answers");
            None
        }
        None => None,
    };
    if args.json {
        outln!(
            "{}",
            json!({"event": if response.updated {"updated"} else {"registered"}, "peer_id": peer_id,
                   "peer": args.peer.to_string(), "server_id": response.server_id,
                   "server_epoch": response.server_epoch, "timestamp": output::now_rfc3339(),
                   "answer": answer.as_ref().map(|a| match a {
                       Answer::Alive => "alive",
                       Answer::AnswersAs(_) => "answers_as",
                       Answer::Silent => "no_answer",
                   }),
                   "answers_as": match &answer { Some(Answer::AnswersAs(id)) => Some(id), _ => None }})
        );
        return Ok(());
    }
    match answer {
        Some(Answer::Alive) => outln!("peer answers: ALIVE"),
        Some(Answer::AnswersAs(id)) => eprintln!(
            "warning: the peer at {} answers as {}, not {}: its replies will not count. \
             If that is the node you meant, register it by that id (and deregister {})",
            args.peer,
            output::untrusted(&id),
            output::untrusted(&peer_id),
            output::untrusted(&peer_id),
        ),
        Some(Answer::Silent) => eprintln!(
            "warning: no answer from the peer at {} yet (waited {}); `heartbeater peers` shows when it answers",
            args.peer,
            crate::duration::format(ANSWER_WAIT)
        ),
        None => {}
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
        outln!(
            "{}",
            json!({"event": "deregistered", "peer_id": args.peer_id, "server_id": response.server_id,
                   "server_epoch": response.server_epoch, "timestamp": output::now_rfc3339()})
        );
    } else {
        outln!(
            "deregistered peer {} from node {}",
            output::untrusted(&args.peer_id),
            output::untrusted(&response.server_id)
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
          value_parser = crate::duration::within(Duration::from_millis(100), None))]
    watch: Option<Duration>,
}

pub async fn peers(args: PeersArgs) -> anyhow::Result<()> {
    let c = client(&args.server)?;
    let Some(every) = args.watch else {
        return show_peers(&c, &args, false).await;
    };
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let stop = crate::interrupted()?;
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            r = &mut stop => return r,
            _ = tick.tick() => {
                if tty {
                    // Home and clear: the table redraws in place.
                    out!("\x1b[H\x1b[2J");
                }
                outln!("{}  peers of {}  (every {})", output::now_rfc3339(),
                    args.server.server, crate::duration::format(every));
                show_peers(&c, &args, true).await?;
                if !tty {
                    outln!();
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
            outln!("{}", output::peer_json(p));
        }
    } else if response.peers.is_empty() {
        outln!(
            "no peers registered on node {}",
            output::untrusted(&response.server_id)
        );
    } else {
        out!(
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
            eprintln!(
                "  {}: {}",
                output::untrusted(&q.peer_id),
                output::untrusted(&q.reason)
            );
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

/// The longest wait between two attempts to reopen a lost watch.
const WATCH_RETRY_MAX: Duration = Duration::from_secs(5);

/// A line for the person at the terminal, on stderr; a closed stderr is
/// no reason to stop.
fn note(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

pub async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let colour = output::colour(&std::io::stdout());
    let c = client(&args.server)?;
    let mut events = c
        .watch_peers(args.snapshot)
        .await
        .map_err(|e| explain(e, &args.server))?;
    let stop = crate::interrupted()?;
    // For a person at a terminal, who otherwise sees nothing until the
    // first event; a script reading the events needs no banner.
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        note(format_args!(
            "watching peer events of {} (Ctrl-C to stop)",
            args.server.server
        ));
    }
    tokio::pin!(stop);
    loop {
        let lost = tokio::select! {
            r = &mut stop => return r,
            item = events.next() => match item {
                Some(Ok(e)) => {
                    if args.json {
                        outln!("{}", output::event_json(&e));
                    } else {
                        outln!("{}", output::event_text(&e, colour));
                    }
                    continue;
                }
                Some(Err(e)) => e.to_string(),
                None => "the node closed the stream".to_string(),
            }
        };
        // A node restarting is routine: follow it to its next life instead
        // of leaving the operator with a dead command. Events of the gap
        // are not replayed; with --snapshot, each reconnection starts with
        // the peers' states again.
        note(format_args!("connection lost ({lost}), reconnecting..."));
        let reopen = async {
            let mut wait = Duration::from_millis(100);
            loop {
                tokio::time::sleep(wait).await;
                match c.watch_peers(args.snapshot).await {
                    Ok(events) => break Ok(events),
                    Err(e) if e.is_retryable() => {}
                    // A token now refused, say: retrying cannot fix it.
                    Err(e) => break Err(explain(e, &args.server)),
                }
                wait = (wait * 2).min(WATCH_RETRY_MAX);
            }
        };
        events = tokio::select! {
            r = &mut stop => return r,
            reopened = reopen => reopened?,
        };
        note(format_args!("reconnected to {}", args.server.server));
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
        outln!(
            "{}",
            json!({"event": "heartbeat", "server_id": response.server_id, "server_epoch": response.server_epoch,
                   "rtt_micros": u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX), "timestamp": output::now_rfc3339()})
        );
    } else {
        outln!(
            "identity {}  epoch {}  rtt {:.2}ms",
            output::untrusted(&response.server_id),
            response.server_epoch,
            rtt.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}
