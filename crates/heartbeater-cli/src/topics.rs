//! `heartbeater publish` and `heartbeater subscribe`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use heartbeater::{
    ClientConnectionListener, HeartbeatParameters, HeartbeatServer, SubscriptionState, Uuid,
};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

use crate::address::HostPort;
use crate::output::{self, outln};
use crate::security::{read_tokens, ClientSecurityArgs, ServerTlsFiles};

/// Options of `publish`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  heartbeater publish --listen 127.0.0.1:8190 --topic orders --heartbeat-rate 500ms   # each stdin line is a message")]
pub struct PublishArgs {
    /// Where this publisher's node listens for subscribers.
    #[arg(long, default_value = "127.0.0.1:8181", value_name = "HOST:PORT")]
    listen: HostPort,
    /// The topic.
    #[arg(long)]
    topic: String,
    /// Time between heartbeats to the subscribers.
    #[arg(long, default_value = "1s", value_parser = crate::duration::parse_positive)]
    heartbeat_rate: Duration,
    /// How long a heartbeat answer counts [default: the rate].
    #[arg(long, value_parser = crate::duration::parse_positive)]
    heartbeat_timeout: Option<Duration>,
    /// Unanswered heartbeats before a client is disconnected.
    #[arg(long, default_value_t = 3)]
    max_client_conn_checks: u32,
    /// Publish without heartbeats (no connected/disconnected lines).
    #[arg(long)]
    no_heartbeats: bool,
    /// How long a message waits for a subscriber that has stopped reading
    /// before that subscriber is dropped (and reported disconnected)
    /// [default: 5s].
    #[arg(long, value_parser = crate::duration::parse_positive)]
    stall_timeout: Option<Duration>,
    /// Serve subscribers over TLS with this certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: only subscribers with a certificate of this CA (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Subscribers must present a bearer token from FILE (one per line).
    #[arg(long, value_name = "FILE")]
    auth_token_file: Option<PathBuf>,
    /// JSON lines instead of text.
    #[arg(long)]
    json: bool,
}

struct PrintingListener {
    json: bool,
}

impl PrintingListener {
    fn print(&self, event: &str, topic: &str, client: Uuid) {
        let line = if self.json {
            json!({"event": event, "topic": topic, "client": client.to_string(), "timestamp": output::now_rfc3339()})
                .to_string()
        } else {
            format!(
                "{} {event:<12} {client} topic={topic}",
                output::now_rfc3339()
            )
        };
        let mut out = std::io::stdout().lock();
        // A closed stdout (the reader went away) is no reason to stop publishing.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

impl ClientConnectionListener for PrintingListener {
    fn on_client_connected(&self, topic: &str, client: Uuid) {
        self.print("connected", topic, client);
    }

    fn on_client_disconnected(&self, topic: &str, client: Uuid) {
        self.print("disconnected", topic, client);
    }
}

pub async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let params = HeartbeatParameters::builder()
        .heartbeat_rate(args.heartbeat_rate)
        .heartbeat_timeout(args.heartbeat_timeout.unwrap_or(args.heartbeat_rate))
        .max_client_conn_checks(args.max_client_conn_checks)
        .build()?;
    let mut builder = HeartbeatServer::builder()
        .server_host(args.listen.host.clone())
        .server_port(args.listen.port)
        .in_memory();
    let tls_files = ServerTlsFiles {
        cert: args.tls_cert.clone(),
        key: args.tls_key.clone(),
        client_ca: args.tls_client_ca.clone(),
        ca: None,
    };
    if let Some(tls) = tls_files.server()? {
        builder = builder.tls(tls);
    }
    if let Some(path) = &args.auth_token_file {
        // Subscribing is the only call a publisher serves that matters: a
        // token on a publisher guards reads.
        builder = builder.auth_tokens(read_tokens(path)?).auth_reads(true);
    }
    let server = builder.build()?;
    let publisher = server.create_publisher(&args.topic)?;
    if let Some(stall) = args.stall_timeout {
        publisher.set_stall_timeout(stall)?;
    }
    let addr = server.start().await?;
    // Before the banner: whoever reads it may signal at once.
    let stop = crate::interrupted()?;
    if !args.no_heartbeats {
        publisher.activate_heartbeats(PrintingListener { json: args.json }, params)?;
    }
    if args.json {
        outln!(
            "{}",
            json!({"event": "publishing", "topic": args.topic, "listen": addr.to_string(),
                   "identity": server.identity(), "heartbeats": !args.no_heartbeats,
                   "timestamp": output::now_rfc3339()})
        );
    } else {
        eprintln!(
            "publishing topic {:?} on {addr}; each line typed is one message (Ctrl-C to stop)",
            args.topic
        );
    }

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = &mut stop => { r?; break }
            line = lines.next_line(), if stdin_open => match line.context("reading stdin")? {
                Some(line) => {
                    publisher.send(line).await;
                }
                None => stdin_open = false,
            }
        }
    }
    // Waiting lets a line being printed by the listener finish first.
    publisher.deactivate_heartbeats_and_wait().await;
    drop(publisher);
    server.stop().await?;
    Ok(())
}

/// A line for the person at the terminal, on stderr; a closed stderr is
/// no reason to stop.
fn note(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Says where a subscription stands: on stderr as text, or on stdout as a
/// JSON line with --json (`connected`, `not_found`, `retrying` and its
/// `reason`). `was_connected`: whether it was connected before, which
/// makes a connection a reconnection and a failure a loss.
fn show_state(
    args: &SubscribeArgs,
    state: &SubscriptionState,
    was_connected: bool,
) -> anyhow::Result<()> {
    let (event, reason) = match state {
        SubscriptionState::Connected => ("connected", None),
        SubscriptionState::NotFound => ("not_found", None),
        SubscriptionState::Retrying { reason } => ("retrying", Some(reason.as_str())),
        _ => ("connecting", None),
    };
    if args.json {
        outln!(
            "{}",
            json!({"event": event, "topic": args.topic, "publisher": args.publisher.to_string(),
                   "reason": reason, "again": was_connected, "timestamp": output::now_rfc3339()})
        );
        return Ok(());
    }
    let (topic, publisher) = (&args.topic, &args.publisher);
    match (state, was_connected) {
        (SubscriptionState::Connected, false) => note(format_args!(
            "connected: messages of {topic:?} from {publisher} follow"
        )),
        (SubscriptionState::Connected, true) => {
            note(format_args!("connected again to {publisher}"))
        }
        (SubscriptionState::NotFound, _) => note(format_args!(
            "{publisher} does not publish topic {topic:?}; retrying until it does"
        )),
        (SubscriptionState::Retrying { reason }, false) => note(format_args!(
            "not subscribed yet, retrying: {}",
            output::untrusted(reason)
        )),
        (SubscriptionState::Retrying { reason }, true) => {
            note(format_args!("reconnecting: {}", output::untrusted(reason)))
        }
        _ => note(format_args!("connecting to {publisher}")),
    }
    Ok(())
}

/// Options of `subscribe`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  heartbeater subscribe --topic orders --publisher 127.0.0.1:8190")]
pub struct SubscribeArgs {
    /// The publisher's node.
    #[arg(long, value_name = "HOST:PORT")]
    publisher: HostPort,
    /// The topic.
    #[arg(long)]
    topic: String,
    /// JSON lines instead of the bare messages.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    security: ClientSecurityArgs,
}

pub async fn subscribe(args: SubscribeArgs) -> anyhow::Result<()> {
    let publisher: SocketAddr =
        tokio::net::lookup_host((args.publisher.host.as_str(), args.publisher.port))
            .await
            .with_context(|| format!("--publisher {}", args.publisher))?
            .next()
            .with_context(|| format!("--publisher {}: resolves to no address", args.publisher))?;
    // A node of our own, only for its identity (the client instance id the
    // publisher sees); it needs no listener.
    let mut builder = HeartbeatServer::builder().in_memory();
    if let Some(tls) = args.security.tls()? {
        builder = builder.peer_tls(tls);
    }
    if let Some(token) = args.security.token()? {
        builder = builder.peer_token(token);
    }
    let node = builder.build()?;
    let json = args.json;
    // The messages are what `subscribe` is for: once nobody reads them
    // (`subscribe ... | head -3`), the command is over.
    let (reader_gone, mut gone) = tokio::sync::watch::channel(false);
    let subscription = node.subscribe(&args.topic, publisher, move |topic: &str, payload: &[u8]| {
        let text = String::from_utf8_lossy(payload);
        let line = if json {
            json!({"event": "message", "topic": topic, "payload": text, "timestamp": output::now_rfc3339()})
                .to_string()
        } else {
            text.into_owned()
        };
        if let Err(e) = output::write_stdout(format_args!("{line}\n")) {
            if e.is::<output::ReaderGone>() {
                reader_gone.send_replace(true);
            }
        }
    })?;
    let stop = crate::interrupted()?;
    if json {
        outln!(
            "{}",
            json!({"event": "subscribed", "topic": args.topic, "publisher": args.publisher.to_string(),
                   "client": node.instance_id().to_string(), "timestamp": output::now_rfc3339()})
        );
    } else {
        note(format_args!(
            "subscribing to {:?} at {} as client {} (Ctrl-C to stop)",
            args.topic,
            args.publisher,
            node.instance_id()
        ));
    }
    let mut states = subscription.watch_state();
    let mut shown = SubscriptionState::Connecting;
    let mut was_connected = false;
    tokio::pin!(stop);
    loop {
        let state = states.borrow_and_update().clone();
        if state != shown {
            show_state(&args, &state, was_connected)?;
            was_connected |= state == SubscriptionState::Connected;
            shown = state;
        }
        tokio::select! {
            r = &mut stop => { r?; break }
            changed = states.changed() => if changed.is_err() { break },
            Ok(_) = gone.wait_for(|gone| *gone) => {
                drop(subscription);
                return Err(output::ReaderGone.into());
            }
        }
    }
    drop(subscription);
    Ok(())
}
