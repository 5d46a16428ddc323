//! `heartbeater`: run a node, register peers on it, watch their liveness.
//!
//! Only argument parsing and output live here; everything else is the
//! `heartbeater` library.

mod address;
mod admin;
mod output;
mod security;
mod serve;
mod topics;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::address::HostPort;

/// Heartbeater: tells each process, quickly and without false alarms, which
/// of its peers are alive.
#[derive(Debug, Parser)]
#[command(name = "heartbeater", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node: answer heartbeats, heartbeat registered peers, keep the
    /// registry in an embedded RocksDB.
    Serve(serve::ServeArgs),
    /// Register (or update) a peer for a node to heartbeat.
    Register(admin::RegisterArgs),
    /// Stop a node heartbeating a peer.
    Deregister(admin::DeregisterArgs),
    /// Show the liveness of every peer registered on a node.
    Peers(admin::PeersArgs),
    /// Print a node's peer events as they happen, until interrupted.
    Watch(admin::WatchArgs),
    /// Send one heartbeat to a node; print its identity, epoch and the RTT.
    Heartbeat(admin::HeartbeatArgs),
    /// Publish a topic: each line read on stdin is one message; print which
    /// subscribers connect and disconnect, as heartbeats tell.
    Publish(topics::PublishArgs),
    /// Subscribe to a topic and print its messages.
    Subscribe(topics::SubscribeArgs),
}

/// Options shared by every command that talks to a node.
#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// The node to talk to.
    #[arg(long, default_value = "127.0.0.1:8181", value_name = "HOST:PORT")]
    server: HostPort,
    /// How long to wait for the node's answer.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    deadline: Duration,
    #[command(flatten)]
    security: security::ClientSecurityArgs,
}

/// Resolves at the first SIGINT (Ctrl-C) or SIGTERM.
async fn interrupted() -> anyhow::Result<()> {
    use anyhow::Context;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot install the SIGINT handler"),
        _ = terminate.recv() => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HEARTBEATER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in a log
        // file or a pipe, and never with NO_COLOR set.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Register(args) => admin::register(args).await,
            Command::Deregister(args) => admin::deregister(args).await,
            Command::Peers(args) => admin::peers(args).await,
            Command::Watch(args) => admin::watch(args).await,
            Command::Heartbeat(args) => admin::heartbeat(args).await,
            Command::Publish(args) => topics::publish(args).await,
            Command::Subscribe(args) => topics::subscribe(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
