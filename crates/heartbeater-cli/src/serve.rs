//! `heartbeater serve`.

use std::path::PathBuf;

use anyhow::Context;
use futures_util::StreamExt;
use heartbeater::HeartbeatServer;
use serde::Deserialize;
use serde_json::json;

use crate::address::HostPort;
use crate::output;

/// Options of `serve`. A `--config` file may set the same keys (`listen`,
/// `data_dir`, `epoch`, `in_memory`, `udp`, `cluster_key_file`); flags given
/// on the command line win.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// A TOML file with `listen`, `data_dir`, `epoch`, `in_memory`, `udp` and
    /// `cluster_key_file` keys.
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
    let server = builder.build()?;
    let mut events = server.events();
    let addr = server.start().await?;
    let storage = if in_memory {
        "memory (nothing persists)".to_string()
    } else {
        format!("{} (RocksDB)", data_dir.display())
    };
    let identity = server.identity();
    if args.json {
        println!(
            "{}",
            json!({
                "event": "started",
                "listen": addr.to_string(),
                "identity": identity,
                "epoch": server.epoch(),
                "data_dir": (!in_memory).then(|| data_dir.display().to_string()),
                "peers": server.peers().await.len(),
                "cluster_keys": keyed,
                "timestamp": output::now_rfc3339(),
            })
        );
    } else {
        println!("heartbeater node started");
        println!("  listen    {addr}");
        println!("  identity  {identity}");
        println!("  epoch     {}", server.epoch());
        println!("  data dir  {storage}");
        println!("  peers     {} restored", server.peers().await.len());
        if keyed {
            println!("  datagrams authenticated with the cluster keys");
        }
    }

    let stop = crate::interrupted();
    tokio::pin!(stop);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install the SIGHUP handler")?;
    loop {
        tokio::select! {
            r = &mut stop => { r?; break }
            Some(()) = hangup.recv() => match &key_file {
                // A bad file keeps the keys in use: a typo must not cut the
                // node off from its peers.
                Some(path) => match read_keys(path) {
                    Ok(keyring) => {
                        let keys = keyring.key_ids().len();
                        let primary = keyring.primary_id().to_string();
                        server.set_keyring(Some(keyring)).await?;
                        if args.json {
                            println!("{}", json!({
                                "event": "cluster_keys_reloaded",
                                "keys": keys,
                                "primary": primary,
                                "timestamp": output::now_rfc3339(),
                            }));
                        } else {
                            println!("cluster keys reloaded: {keys} accepted, primary {primary}");
                        }
                    }
                    Err(e) => tracing::error!("cluster keys not reloaded, the old ones stay: {e:#}"),
                },
                None => tracing::warn!("SIGHUP ignored: no --cluster-key-file to reload"),
            },
            event = events.next() => {
                let Some(event) = event else { break };
                let e = event.to_proto(&identity);
                if args.json {
                    println!("{}", output::event_json(&e));
                } else {
                    println!("{}", output::event_text(&e));
                }
            }
        }
    }
    server.stop().await?;
    if args.json {
        println!(
            "{}",
            json!({"event": "stopped", "identity": identity, "timestamp": output::now_rfc3339()})
        );
    } else {
        println!("heartbeater node stopped");
    }
    Ok(())
}
