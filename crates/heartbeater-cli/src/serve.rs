//! `heartbeater serve`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use futures_util::StreamExt;
use heartbeater::HeartbeatServer;
use serde::Deserialize;
use serde_json::json;

use crate::address::HostPort;

/// `println!` that ignores a closed stdout: a node outlives whoever reads
/// its output (`serve | head -1` must not stop it at the next event).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
use crate::output;
use crate::security::{read_tokens, ServerTlsFiles};

/// Options of `serve`. A `--config` file may set the same keys (`listen`,
/// `data_dir`, `epoch`, `in_memory`, `udp`, `cluster_key_file`, the limits,
/// the `tls_*` files, `auth_token_file`, `auth_reads`); flags given on the
/// command line win.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// A TOML file with the same keys as the long options, in snake case
    /// (`listen`, `data_dir`, `tls_cert`, `auth_token_file`, `max_peers`, ...).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free one) [default: 127.0.0.1:8181].
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<HostPort>,
    /// Where the embedded RocksDB keeps identity, epoch and peers
    /// [default: ./heartbeater-data].
    #[arg(long, value_name = "DIR", conflicts_with = "in_memory")]
    data_dir: Option<PathBuf>,
    /// Keep the registry in memory only (a new identity at every start).
    #[arg(long)]
    in_memory: bool,
    /// Explicit epoch (at least the stored one) instead of stored + 1.
    #[arg(long, value_name = "N")]
    epoch: Option<u64>,
    /// Heartbeat over gRPC only: do not bind UDP on the listen port and do
    /// not send heartbeat datagrams (for networks that drop UDP).
    #[arg(long)]
    no_udp: bool,
    /// Authenticate heartbeat datagrams with the cluster keys in FILE: one
    /// hex-encoded secret (16 to 64 bytes, e.g. `openssl rand -hex 32`) per
    /// line, the first one signs, all are accepted; `#` starts a comment.
    /// SIGHUP reloads the file (the way to rotate keys without a restart).
    #[arg(long, value_name = "FILE")]
    cluster_key_file: Option<PathBuf>,
    /// The cluster keys themselves, in the file's format (commas or spaces
    /// between keys); prefer the file, which `ps` and `/proc` do not show.
    /// A key file, when given, wins.
    #[arg(
        long,
        env = "HEARTBEATER_CLUSTER_KEYS",
        hide_env_values = true,
        value_name = "KEYS"
    )]
    cluster_keys: Option<String>,
    /// The most peers the registry holds; a registration past it is
    /// refused with RESOURCE_EXHAUSTED [default: 100000].
    #[arg(long, value_name = "N")]
    max_peers: Option<usize>,
    /// The shortest heartbeat period a RegisterPeer call over gRPC may ask
    /// for, so that no one can make the node send a datagram every
    /// millisecond to a third party [default: 10ms].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    min_network_freq: Option<std::time::Duration>,
    /// The local-pause guard: when this node did not run for longer than
    /// this (stopped, starved, frozen), no peer is judged on the gap.
    /// `auto` is half the shortest heartbeat period (at least 20ms), `off`
    /// counts every heartbeat [default: auto].
    #[arg(long, value_name = "auto|off|DURATION", value_parser = parse_pause_threshold)]
    pause_threshold: Option<heartbeater::PauseThreshold>,
    /// The rule for registrations that name none: `count` (max-missed
    /// heartbeats) or `phi` (phi accrual) [default: count].
    #[arg(long, value_enum, value_name = "count|phi")]
    default_detector: Option<crate::admin::DetectorArg>,
    /// With --default-detector phi: the phi at which peers are convicted
    /// (1 to 64) [default: 8].
    #[arg(long, value_name = "PHI")]
    phi_threshold: Option<f64>,
    /// Consecutive valid replies before an unreachable peer is alive again,
    /// for registrations that name none (1 to 100) [default: 1].
    #[arg(long, value_name = "N")]
    default_rise: Option<u32>,
    /// Serve gRPC over TLS with this certificate chain (PEM, the node's
    /// own certificate first). SIGHUP re-reads it.
    #[arg(long, value_name = "FILE", env = "HEARTBEATER_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", env = "HEARTBEATER_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: refuse clients without a certificate issued by the CA in
    /// FILE (PEM).
    #[arg(long, value_name = "FILE", env = "HEARTBEATER_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// The CA (PEM) that peers' certificates chain to, for the connections
    /// this node opens (heartbeats over gRPC); the node presents --tls-cert
    /// there [default: --tls-client-ca].
    #[arg(long, value_name = "FILE", env = "HEARTBEATER_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Require a bearer token from FILE (one per line, all accepted; the
    /// first is sent on this node's own calls) for RegisterPeer and
    /// DeregisterPeer. SIGHUP re-reads it.
    #[arg(long, value_name = "FILE", env = "HEARTBEATER_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
    /// Require the token on reads too (Heartbeat, ListPeers, WatchPeers,
    /// subscriptions, health).
    #[arg(long, requires = "auth_token_file")]
    auth_reads: bool,
    /// The largest request message, in bytes; larger ones are refused with
    /// RESOURCE_EXHAUSTED [default: 4194304].
    #[arg(long, value_name = "BYTES")]
    max_request_bytes: Option<usize>,
    /// The most connections one client IP address may hold open [default: 1024].
    #[arg(long, value_name = "N")]
    max_connections_per_address: Option<usize>,
    /// The most calls in progress on one connection [default: 128].
    #[arg(long, value_name = "N")]
    max_streams_per_connection: Option<u32>,
    /// The most WatchPeers streams open at once [default: 1024].
    #[arg(long, value_name = "N")]
    max_watchers: Option<usize>,
    /// Print the start line and peer events as JSON lines.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    epoch: Option<u64>,
    in_memory: Option<bool>,
    udp: Option<bool>,
    cluster_key_file: Option<PathBuf>,
    max_peers: Option<usize>,
    min_network_freq: Option<String>,
    pause_threshold: Option<String>,
    default_detector: Option<String>,
    phi_threshold: Option<f64>,
    default_rise: Option<u32>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    auth_token_file: Option<PathBuf>,
    auth_reads: Option<bool>,
    max_request_bytes: Option<usize>,
    max_connections_per_address: Option<usize>,
    max_streams_per_connection: Option<u32>,
    max_watchers: Option<usize>,
}

/// Reads a cluster key file, and warns when others may read it too.
fn read_keys(path: &std::path::Path) -> anyhow::Result<heartbeater::Keyring> {
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read cluster key file {}", path.display()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                "the cluster key file is readable by group or others; chmod 600 it"
            );
        }
    }
    heartbeater::Keyring::parse(&text)
        .with_context(|| format!("cluster key file {}", path.display()))
}

fn reloaded(json: bool, what: &str, text: String, fields: serde_json::Value) {
    if json {
        let mut line = json!({"event": format!("{what}_reloaded"), "detail": text, "timestamp": output::now_rfc3339()});
        if let (Some(line), serde_json::Value::Object(fields)) = (line.as_object_mut(), fields) {
            line.extend(fields);
        }
        say!("{line}");
    } else {
        say!("{} reloaded: {text}", what.replace('_', " "));
    }
}

/// SIGHUP: re-reads every file the node was started with. A file that no
/// longer loads keeps what is in use: a typo must not cut the node off from
/// its peers or its clients.
async fn reload(
    server: &HeartbeatServer,
    key_file: Option<&Path>,
    tls_files: &ServerTlsFiles,
    token_file: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    if let Some(path) = key_file {
        match read_keys(path) {
            Ok(keyring) => {
                let keys = keyring.key_ids().len();
                let primary = keyring.primary_id().to_string();
                server.set_keyring(Some(keyring)).await?;
                reloaded(
                    json,
                    "cluster_keys",
                    format!("{keys} accepted, primary {primary}"),
                    json!({"keys": keys, "primary": primary}),
                );
            }
            Err(e) => tracing::error!("cluster keys not reloaded, the old ones stay: {e:#}"),
        }
    }
    match tls_files.server() {
        Ok(Some(tls)) => {
            server.set_tls(tls);
            reloaded(
                json,
                "tls",
                "certificate for new connections".into(),
                json!({}),
            );
        }
        Ok(None) => {}
        Err(e) => tracing::error!("TLS not reloaded, the old certificate stays: {e:#}"),
    }
    match tls_files.peer() {
        Ok(Some(tls)) => server.set_peer_tls(Some(tls)),
        Ok(None) => {}
        Err(e) => tracing::error!("peer TLS not reloaded, the old one stays: {e:#}"),
    }
    if let Some(path) = token_file {
        match read_tokens(path) {
            Ok(tokens) => {
                let n = tokens.len();
                server.set_auth_tokens(Some(tokens));
                reloaded(
                    json,
                    "auth_tokens",
                    format!("{n} accepted"),
                    json!({"tokens": n}),
                );
            }
            Err(e) => tracing::error!("tokens not reloaded, the old ones stay: {e:#}"),
        }
    }
    if key_file.is_none() && tls_files.cert.is_none() && token_file.is_none() {
        tracing::warn!("SIGHUP ignored: no key, certificate or token file to reload");
    }
    Ok(())
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            toml::from_str::<ConfigFile>(&text)
                .with_context(|| format!("config file {}", path.display()))?
        }
        None => ConfigFile::default(),
    };
    let listen = match (args.listen, file.listen) {
        (Some(l), _) => l,
        (None, Some(l)) => l
            .parse::<HostPort>()
            .map_err(|e| anyhow::anyhow!("config file: listen: {e}"))?,
        (None, None) => HostPort {
            host: heartbeater::DEFAULT_HOST.into(),
            port: heartbeater::DEFAULT_PORT,
        },
    };
    let in_memory = args.in_memory || (args.data_dir.is_none() && file.in_memory.unwrap_or(false));
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from(heartbeater::DEFAULT_DATA_DIR));

    let mut builder = HeartbeatServer::builder()
        .server_host(listen.host.clone())
        .server_port(listen.port)
        .udp_heartbeats(!args.no_udp && file.udp.unwrap_or(true));
    builder = if in_memory {
        builder.in_memory()
    } else {
        builder.data_dir(&data_dir)
    };
    if let Some(epoch) = args.epoch.or(file.epoch) {
        builder = builder.server_epoch(epoch);
    }
    if let Some(max) = args.max_peers.or(file.max_peers) {
        builder = builder.max_peers(max);
    }
    let min_freq = match (args.min_network_freq, &file.min_network_freq) {
        (Some(d), _) => Some(d),
        (None, Some(text)) => Some(
            humantime::parse_duration(text)
                .map_err(|e| anyhow::anyhow!("config file: min_network_freq: {e}"))?,
        ),
        (None, None) => None,
    };
    if let Some(min) = min_freq {
        builder = builder.min_network_heartbeat_freq(min);
    }
    let pause = match (args.pause_threshold, &file.pause_threshold) {
        (Some(p), _) => Some(p),
        (None, Some(text)) => Some(
            parse_pause_threshold(text)
                .map_err(|e| anyhow::anyhow!("config file: pause_threshold: {e}"))?,
        ),
        (None, None) => None,
    };
    if let Some(pause) = pause {
        builder = builder.pause_threshold(pause);
    }
    let default_detector = match (args.default_detector, file.default_detector.as_deref()) {
        (Some(d), _) => Some(d),
        (None, Some("count")) => Some(crate::admin::DetectorArg::Count),
        (None, Some("phi")) => Some(crate::admin::DetectorArg::Phi),
        (None, Some(other)) => {
            anyhow::bail!("config file: default_detector: {other:?}; expected \"count\" or \"phi\"")
        }
        (None, None) => None,
    };
    let phi_threshold = args.phi_threshold.or(file.phi_threshold);
    match default_detector {
        Some(crate::admin::DetectorArg::Phi) => {
            builder = builder.default_detector(heartbeater::DefaultDetector::PhiAccrual {
                threshold: phi_threshold.unwrap_or(8.0),
            });
        }
        _ if phi_threshold.is_some() => {
            anyhow::bail!("--phi-threshold / phi_threshold is for --default-detector phi")
        }
        _ => {}
    }
    if let Some(rise) = args.default_rise.or(file.default_rise) {
        builder = builder.default_rise(rise);
    }
    let key_file = args.cluster_key_file.or(file.cluster_key_file);
    let keyring = match (&key_file, &args.cluster_keys) {
        (Some(path), _) => Some(read_keys(path)?),
        (None, Some(keys)) => Some(
            heartbeater::Keyring::parse(keys)
                .context("HEARTBEATER_CLUSTER_KEYS / --cluster-keys")?,
        ),
        (None, None) => None,
    };
    let keyed = keyring.is_some();
    if let Some(keyring) = keyring {
        builder = builder.cluster_keys(keyring);
    }
    if let Some(n) = args.max_request_bytes.or(file.max_request_bytes) {
        builder = builder.max_request_bytes(n);
    }
    if let Some(n) = args
        .max_connections_per_address
        .or(file.max_connections_per_address)
    {
        builder = builder.max_connections_per_address(n);
    }
    if let Some(n) = args
        .max_streams_per_connection
        .or(file.max_streams_per_connection)
    {
        builder = builder.max_streams_per_connection(n);
    }
    if let Some(n) = args.max_watchers.or(file.max_watchers) {
        builder = builder.max_watchers(n);
    }
    let tls_files = ServerTlsFiles {
        cert: args.tls_cert.or(file.tls_cert),
        key: args.tls_key.or(file.tls_key),
        client_ca: args.tls_client_ca.or(file.tls_client_ca),
        ca: args.tls_ca.or(file.tls_ca),
    };
    let tls = tls_files.server()?;
    let mutual = tls
        .as_ref()
        .is_some_and(|t| t.requires_client_certificate());
    if let Some(tls) = &tls {
        builder = builder.tls(tls.clone());
    }
    let peer_tls = tls_files.peer()?;
    if tls.is_some() && peer_tls.is_none() {
        tracing::warn!("--tls-cert without --tls-ca: this node's own gRPC calls (heartbeats to peers that do not answer datagrams) go in plain text");
    }
    if let Some(peer_tls) = peer_tls {
        builder = builder.peer_tls(peer_tls);
    }
    let token_file = args.auth_token_file.or(file.auth_token_file);
    let auth_reads = args.auth_reads || file.auth_reads.unwrap_or(false);
    if auth_reads && token_file.is_none() {
        anyhow::bail!("auth_reads needs auth_token_file: there is no token to require");
    }
    if let Some(path) = &token_file {
        builder = builder
            .auth_tokens(read_tokens(path)?)
            .auth_reads(auth_reads);
    }
    let server = builder.build_async().await?;
    let mut events = server.events();
    let addr = server.start().await?;
    let storage = if in_memory {
        "memory (nothing persists)".to_string()
    } else {
        format!("{} (RocksDB)", data_dir.display())
    };
    let identity = server.identity();
    if args.json {
        say!(
            "{}",
            json!({
                "event": "started",
                "listen": addr.to_string(),
                "identity": identity,
                "epoch": server.epoch(),
                "data_dir": (!in_memory).then(|| data_dir.display().to_string()),
                "peers": server.peers().await.len(),
                "cluster_keys": keyed,
                "tls": tls.is_some(),
                "mutual_tls": mutual,
                "auth_token": token_file.is_some(),
                "timestamp": output::now_rfc3339(),
            })
        );
    } else {
        say!("heartbeater node started");
        say!("  listen    {addr}");
        say!("  identity  {identity}");
        say!("  epoch     {}", server.epoch());
        say!("  data dir  {storage}");
        say!("  peers     {} restored", server.peers().await.len());
        if keyed {
            say!("  datagrams authenticated with the cluster keys");
        }
        match (tls.is_some(), mutual) {
            (true, true) => say!("  gRPC      TLS, client certificates required"),
            (true, false) => say!("  gRPC      TLS"),
            _ => {}
        }
        if token_file.is_some() {
            say!(
                "  token     required for {}",
                if auth_reads { "every call" } else { "changes" }
            );
        }
    }

    let stop = crate::interrupted();
    tokio::pin!(stop);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install the SIGHUP handler")?;
    loop {
        tokio::select! {
            r = &mut stop => { r?; break }
            Some(()) = hangup.recv() => {
                reload(&server, key_file.as_deref(), &tls_files, token_file.as_deref(), args.json).await?;
            }
            event = events.next() => {
                let Some(event) = event else { break };
                let e = event.to_proto(&identity);
                if args.json {
                    say!("{}", output::event_json(&e));
                } else {
                    say!("{}", output::event_text(&e));
                }
            }
        }
    }
    server.stop().await?;
    if args.json {
        say!(
            "{}",
            json!({"event": "stopped", "identity": identity, "timestamp": output::now_rfc3339()})
        );
    } else {
        say!("heartbeater node stopped");
    }
    Ok(())
}

/// `auto`, `off`, or a duration such as `200ms`.
fn parse_pause_threshold(text: &str) -> Result<heartbeater::PauseThreshold, String> {
    match text.trim() {
        "auto" => Ok(heartbeater::PauseThreshold::Auto),
        "off" => Ok(heartbeater::PauseThreshold::Off),
        other => humantime::parse_duration(other)
            .map(heartbeater::PauseThreshold::Fixed)
            .map_err(|e| {
                format!("{other:?}: expected auto, off or a duration such as 200ms ({e})")
            }),
    }
}
