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
/// `data_dir`, `epoch`, `in_memory`, `udp`); flags given on the command line win.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// A TOML file with `listen`, `data_dir`, `epoch`, `in_memory` and `udp` keys.
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
                "peers": server.peers().len(),
                "timestamp": output::now_rfc3339(),
            })
        );
    } else {
        println!("heartbeater node started");
        println!("  listen    {addr}");
        println!("  identity  {identity}");
        println!("  epoch     {}", server.epoch());
        println!("  data dir  {storage}");
        println!("  peers     {} restored", server.peers().len());
    }

    let stop = crate::interrupted();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = &mut stop => { r?; break }
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
