//! `heartbeater-bench`: Heartbeater's benchmark. Every scenario runs its
//! baseline in the same run and reports the ratio, because absolute figures
//! on a shared machine drift.
//!
//! ```text
//! cargo run --release -p heartbeater-bench -- [--quick] [--json] [--scenario NAME]...
//! ```

mod child;
mod procfs;
mod report;
mod roles;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::report::Row;
use crate::scenarios::Settings;

/// Scenarios in the order they run.
const SCENARIOS: &[&str] = &[
    "rpc",
    "tls",
    "peer-path",
    "register",
    "restore",
    "fanout",
    "detect",
    "topic",
];

/// Scenarios run only when named: they take a minute or more, and either
/// test the node under load rather than measure it against a baseline
/// (load, accuracy, overload), need a server installed beside it (etcd) or
/// a tool (instructions: valgrind), or hold a million peers (scale).
const ON_REQUEST: &[&str] = &[
    "load",
    "accuracy",
    "overload",
    "etcd",
    "scale",
    "instructions",
];

#[derive(Debug, Parser)]
#[command(
    name = "heartbeater-bench",
    about = "Heartbeater's benchmark, baselines included"
)]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    /// Short windows: every scenario in under 3 minutes.
    #[arg(long)]
    quick: bool,
    /// One JSON object per figure, one per line.
    #[arg(long)]
    json: bool,
    /// Run only these scenarios (rpc, tls, peer-path, register, restore,
    /// fanout (also gives memory), detect, topic). Default: all of those.
    /// `load` (a minute under load, see scripts/load.sh), `accuracy`,
    /// `overload` (schedules at 2x and 4x the node's capacity), `etcd`
    /// (against etcd leases and puts; needs Debian's etcd-server), `scale`
    /// (1,000 to 1,000,000 peers on one node) and `instructions` (the node
    /// under callgrind; needs Debian's valgrind) run only when named.
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
    /// The largest size `scale` measures (of 1000, 10000, 100000, 1000000).
    #[arg(long, default_value_t = 1_000_000, value_name = "PEERS")]
    scale_max: usize,
    /// Nodes and responders authenticate every datagram with a cluster key
    /// (one fixed key for the run), to measure what authentication costs.
    #[arg(long)]
    cluster_key: bool,
}

/// Helper processes the bench starts itself.
#[derive(Debug, Subcommand)]
enum Role {
    /// A node on 127.0.0.1:0.
    #[command(hide = true)]
    Node {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Heartbeat peers over gRPC only.
        #[arg(long)]
        no_udp: bool,
        /// Serve TLS with `cert.pem` and `key.pem` from this directory.
        #[arg(long)]
        tls_dir: Option<PathBuf>,
        /// The local-pause guard off (the plain count rule's baseline).
        #[arg(long)]
        pause_off: bool,
        /// Judge registrations by phi accrual unless they say otherwise.
        #[arg(long)]
        phi: bool,
        /// No indirect probes (with a cluster key they are on by default).
        #[arg(long)]
        no_indirect: bool,
    },
    /// A plain tonic echo server.
    #[command(hide = true)]
    Echo,
    /// Lightweight peers, one socket each.
    #[command(hide = true)]
    Responders {
        #[arg(long)]
        count: usize,
    },
    /// Every peer of the scale scenario, each at its own loopback address.
    #[command(hide = true)]
    Addressed,
    /// Nodes subscribed to a topic, counting messages.
    #[command(hide = true)]
    Subscribers {
        #[arg(long)]
        count: usize,
        #[arg(long)]
        publisher: String,
        #[arg(long)]
        topic: String,
    },
}

async fn scenario(name: &str, settings: &Settings) -> anyhow::Result<Vec<Row>> {
    match name {
        "rpc" => scenarios::rpc::run(settings).await,
        "tls" => scenarios::tls::run(settings).await,
        "peer-path" => scenarios::peer_path::run(settings).await,
        "topic" => scenarios::topic::run(settings).await,
        "register" => scenarios::register::run(settings).await,
        "restore" => tokio::task::spawn_blocking(scenarios::restore::run).await?,
        "fanout" | "memory" => scenarios::fanout::run(settings).await,
        "detect" => scenarios::detect::run().await,
        "load" => scenarios::load::run(settings).await,
        "accuracy" => scenarios::accuracy::run(settings).await,
        "overload" => scenarios::overload::run(settings).await,
        "scale" => scenarios::scale::run(settings).await,
        "instructions" => scenarios::instructions::run(settings).await,
        "etcd" => scenarios::etcd::run(settings).await,
        other => anyhow::bail!(
            "unknown scenario {other:?}; known: {}, and on request {}",
            SCENARIOS.join(", "),
            ON_REQUEST.join(", ")
        ),
    }
}

async fn main_async(cli: Cli) -> anyhow::Result<()> {
    match cli.role {
        Some(Role::Node {
            data_dir,
            no_udp,
            tls_dir,
            pause_off,
            phi,
            no_indirect,
        }) => {
            let judging = roles::Judging {
                pause_off,
                phi,
                no_indirect,
            };
            return roles::node(data_dir, !no_udp, tls_dir, judging).await;
        }
        Some(Role::Echo) => return roles::echo().await,
        Some(Role::Responders { count }) => return roles::responders(count).await,
        Some(Role::Addressed) => return roles::addressed().await,
        Some(Role::Subscribers {
            count,
            publisher,
            topic,
        }) => return roles::subscribers(count, publisher, topic).await,
        None => {}
    }
    let settings = Settings {
        quick: cli.quick,
        scale_max: cli.scale_max,
    };
    let names: Vec<String> = if cli.scenarios.is_empty() {
        SCENARIOS.iter().map(|s| s.to_string()).collect()
    } else {
        cli.scenarios
    };
    let mut rows = Vec::new();
    for name in &names {
        eprintln!("running {name}...");
        let new = scenario(name, &settings).await?;
        if cli.json {
            for r in &new {
                println!("{}", r.json());
            }
        }
        rows.extend(new);
    }
    if !cli.json {
        print!("{}", report::table(&rows));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.cluster_key {
        // Before any thread exists; the helper processes inherit it.
        std::env::set_var(roles::KEYED_ENV, "1");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main_async(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
