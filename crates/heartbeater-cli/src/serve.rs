//! `heartbeater serve`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use futures_util::StreamExt;
use heartbeater::HeartbeatServer;
use serde_json::json;

use crate::config::{Layer, SettingFlags, Settings};

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

/// Options of `serve`. Every setting is also a `HEARTBEATER_<KEY>`
/// environment variable and a key of the `--config` file; flags win over
/// variables, variables over the file, the file over the defaults
/// (`--print-config` shows the outcome).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  heartbeater serve                                 # 127.0.0.1:8181, registry in ./heartbeater-data
  heartbeater serve --listen 0.0.0.0:8181 --data-dir /var/lib/heartbeater
  heartbeater serve --config /etc/heartbeater/heartbeater.toml --print-config
  HEARTBEATER_MAX_PEERS=5000 heartbeater serve --in-memory --http-listen off")]
pub struct ServeArgs {
    /// A TOML file with the settings' keys, in snake case (`listen`,
    /// `data_dir`, `tls_cert`, `max_peers`, ...); unknown keys are errors.
    #[arg(long, value_name = "FILE", env = "HEARTBEATER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective settings as TOML, each with where it came from,
    /// and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Heartbeat over gRPC only: do not bind UDP on the listen port and do
    /// not send heartbeat datagrams (the same as --udp false).
    #[arg(long)]
    no_udp: bool,
    #[command(flatten)]
    settings: SettingFlags,
}

impl ServeArgs {
    /// The effective settings of this command line in this environment.
    pub fn settings(self) -> Result<Settings, String> {
        let mut flags = Layer::from(self.settings);
        if flags.in_memory == Some(true) && flags.data_dir.is_some() {
            return Err("--in-memory and --data-dir contradict each other".into());
        }
        if self.no_udp {
            if flags.udp == Some(true) {
                return Err("--no-udp and --udp true contradict each other".into());
            }
            flags.udp = Some(false);
        }
        Settings::load(flags, self.config.as_deref(), |name| {
            std::env::var(name).ok()
        })
    }
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

fn http_context(at: &crate::address::HostPort) -> String {
    format!("cannot serve HTTP on {at} (http_listen; `off` disables it)")
}

pub async fn run(cfg: Settings) -> anyhow::Result<()> {
    let listen = cfg.listen.clone();
    let in_memory = cfg.in_memory;
    let data_dir = cfg.data_dir.clone();
    let json_out = cfg.json;

    let mut builder = HeartbeatServer::builder()
        .server_host(listen.host.clone())
        .server_port(listen.port)
        .udp_heartbeats(cfg.udp)
        .max_peers(cfg.max_peers)
        .min_network_heartbeat_freq(cfg.min_network_freq.0)
        .network_heartbeat_budget(cfg.heartbeat_budget)
        .pause_threshold(cfg.pause_threshold)
        .indirect_probes(cfg.indirect_probes)
        .default_rise(cfg.default_rise)
        .max_request_bytes(cfg.max_request_bytes)
        .max_connections(cfg.max_connections)
        .connection_idle_timeout(cfg.connection_idle_timeout.0)
        .max_connections_per_address(cfg.max_connections_per_address)
        .max_streams_per_connection(cfg.max_streams_per_connection)
        .max_watchers(cfg.max_watchers);
    builder = if in_memory {
        builder.in_memory()
    } else {
        builder.data_dir(&data_dir)
    };
    if let Some(epoch) = cfg.epoch {
        builder = builder.server_epoch(epoch);
    }
    if let Some(id) = &cfg.node_id {
        builder = builder.node_id(id.0.clone());
    }
    match cfg.default_detector {
        crate::admin::DetectorArg::Phi => {
            builder = builder.default_detector(heartbeater::DefaultDetector::PhiAccrual {
                threshold: cfg.phi_threshold.unwrap_or(8.0),
            });
        }
        crate::admin::DetectorArg::Count if cfg.phi_threshold.is_some() => {
            anyhow::bail!("phi_threshold is for default_detector phi (--default-detector phi)")
        }
        crate::admin::DetectorArg::Count => {}
    }
    let key_file = cfg.cluster_key_file.clone();
    let keyring = match (&key_file, &cfg.cluster_keys) {
        (Some(path), _) => Some(read_keys(path)?),
        (None, Some(keys)) => Some(
            heartbeater::Keyring::parse(&keys.0)
                .context("HEARTBEATER_CLUSTER_KEYS / --cluster-keys")?,
        ),
        (None, None) => None,
    };
    let keyed = keyring.is_some();
    if cfg.indirect_probes > heartbeater::MAX_INDIRECT_PROBES {
        anyhow::bail!(
            "indirect_probes = {}: a round asks at most {} helpers (0 turns indirect probes off)",
            cfg.indirect_probes,
            heartbeater::MAX_INDIRECT_PROBES
        );
    }
    if let Some(keyring) = keyring {
        builder = builder.cluster_keys(keyring);
    }
    let tls_files = ServerTlsFiles {
        cert: cfg.tls_cert.clone(),
        key: cfg.tls_key.clone(),
        client_ca: cfg.tls_client_ca.clone(),
        ca: cfg.tls_ca.clone(),
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
    let token_file = cfg.auth_token_file.clone();
    let auth_reads = cfg.auth_reads;
    if auth_reads && token_file.is_none() {
        anyhow::bail!("auth_reads needs auth_token_file: there is no token to require");
    }
    if let Some(path) = &token_file {
        builder = builder
            .auth_tokens(read_tokens(path)?)
            .auth_reads(auth_reads);
    }
    // Every port first: a start that cannot listen must fail before the
    // data directory is created and a new epoch is stored.
    let sockets = builder.bind().await?;
    let http_listener = match &cfg.http_listen {
        None | Some(crate::config::HttpListen::Off) => None,
        Some(crate::config::HttpListen::On(at)) => Some(
            crate::http::HttpServer::bind(at)
                .await
                .with_context(|| http_context(at))?,
        ),
    };
    let server = std::sync::Arc::new(builder.build_async().await?);
    let mut events = server.events();
    let addr = server.start_on(sockets).await?;
    let http = match (http_listener, &cfg.http_listen) {
        (Some(listener), Some(crate::config::HttpListen::On(at))) => Some(
            crate::http::HttpServer::start(listener, server.clone(), cfg.metrics_peer_labels)
                .await
                .with_context(|| http_context(at))?,
        ),
        _ => None,
    };
    if let Some(h) = &http {
        if !h.local_addr().ip().is_loopback() {
            tracing::warn!(
                http = %h.local_addr(),
                "the HTTP listener is reachable beyond this host; it has no TLS or token and shows every peer's id and address: keep it on a trusted network or behind a proxy"
            );
        }
    }
    let http_addr = http.as_ref().map(|h| h.local_addr().to_string());
    let storage = if in_memory {
        "memory (nothing persists)".to_string()
    } else {
        format!("{} (RocksDB)", data_dir.display())
    };
    let identity = server.identity();
    if cfg.indirect_probes > 0 && !server.indirect_probes_on() {
        tracing::warn!(
            "indirect probes are off: {}; every verdict rests on this node's own heartbeats, \
             so a bad link to one peer convicts it",
            if keyed {
                "they travel as datagrams, and UDP is off"
            } else {
                "their requests and answers must be authenticated, and this node has no \
                 cluster key (--cluster-key-file)"
            }
        );
    }
    // Before the started line: whoever reads it may signal at once.
    let stop = crate::interrupted()?;
    if json_out {
        say!(
            "{}",
            json!({
                "event": "started",
                "listen": addr.to_string(),
                "http_listen": http_addr,
                "identity": identity,
                "epoch": server.epoch(),
                "data_dir": (!in_memory).then(|| data_dir.display().to_string()),
                "peers": server.peers().await.len(),
                "cluster_keys": keyed,
                "indirect_probes": server.indirect_probes_on().then_some(cfg.indirect_probes),
                "tls": tls.is_some(),
                "mutual_tls": mutual,
                "auth_token": token_file.is_some(),
                "timestamp": output::now_rfc3339(),
            })
        );
    } else {
        say!("heartbeater node started");
        say!("  listen    {addr}");
        if let Some(h) = &http_addr {
            say!("  http      http://{h}/  (status page, /metrics, /api, /healthz)");
        }
        say!("  identity  {identity}");
        say!("  epoch     {}", server.epoch());
        say!("  data dir  {storage}");
        say!("  peers     {} restored", server.peers().await.len());
        if keyed {
            say!("  datagrams authenticated with the cluster keys");
        }
        if server.indirect_probes_on() {
            say!(
                "  indirect  {} helpers asked before a peer is convicted",
                cfg.indirect_probes
            );
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

    let colour = output::colour(&std::io::stdout());
    tokio::pin!(stop);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install the SIGHUP handler")?;
    loop {
        tokio::select! {
            r = &mut stop => { r?; break }
            Some(()) = hangup.recv() => {
                reload(&server, key_file.as_deref(), &tls_files, token_file.as_deref(), json_out).await?;
            }
            event = events.next() => {
                let Some(event) = event else { break };
                let e = event.to_proto(&identity);
                if json_out {
                    say!("{}", output::event_json(&e));
                } else {
                    say!("{}", output::event_text(&e, colour));
                }
            }
        }
    }
    if let Some(http) = http {
        http.stop().await;
    }
    server.stop().await?;
    if json_out {
        say!(
            "{}",
            json!({"event": "stopped", "identity": identity, "timestamp": output::now_rfc3339()})
        );
    } else {
        say!("heartbeater node stopped");
    }
    Ok(())
}
