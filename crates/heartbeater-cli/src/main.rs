//! `heartbeater`: run a node, register peers on it, watch their liveness.
//!
//! Only argument parsing and output live here; everything else is the
//! `heartbeater` library.

mod address;
mod admin;
mod config;
mod demo;
mod duration;
mod http;
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
#[command(
    name = "heartbeater",
    version,
    about,
    long_about = None,
    after_help = "Examples:
  heartbeater serve                          # a node on 127.0.0.1:8181, status page on http://127.0.0.1:9181/
  heartbeater demo                           # five nodes, one killed and restarted, in about 6 s
  heartbeater register --peer-id <ID> --peer 10.0.0.2:8181 --freq 100ms
  heartbeater peers --watch                  # the peer table, refreshed in place
  heartbeater watch                          # peer events as they happen

Logs go to stderr; RUST_LOG (or HEARTBEATER_LOG) filters them, e.g. RUST_LOG=debug."
)]
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
    /// Run a cluster of nodes in this process, kill one and restart it, and
    /// show how fast the others noticed (about 6 s; exit 0 if all was seen in
    /// time)
    Demo(demo::DemoArgs),
    /// Print a shell completion script: `heartbeater completions bash >
    /// /etc/bash_completion.d/heartbeater`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Options shared by every command that talks to a node.
#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// The node to talk to.
    #[arg(long, default_value = "127.0.0.1:8181", value_name = "HOST:PORT")]
    server: HostPort,
    /// How long to wait for the node's answer.
    #[arg(long, default_value = "5s", value_parser = duration::parse_positive)]
    deadline: Duration,
    #[command(flatten)]
    security: security::ClientSecurityArgs,
}

/// What `main` runs once logging is set up.
enum Run {
    Serve(Box<config::Settings>),
    Other(Box<Command>),
}

/// Installs the SIGINT (Ctrl-C) and SIGTERM handlers at once and returns a
/// future that resolves at the first of them. Installing them before a
/// command says it is ready matters: a signal that arrives between the
/// ready line and the first poll would otherwise take the default action
/// and end the process without its clean stop.
fn interrupted() -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>>> {
    use anyhow::Context;
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut interrupt =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        Ok(())
    })
}

/// Sends log lines to stderr, filtered by `RUST_LOG` (or `HEARTBEATER_LOG`)
/// with `default` when neither is set.
fn init_logging(format: config::LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_env("HEARTBEATER_LOG"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Json => builder.json().with_current_span(false).init(),
        // Colour codes only for a person at a terminal, never in a log
        // file or a pipe, and never with NO_COLOR set.
        config::LogFormat::Text => builder.with_ansi(output::colour(&std::io::stderr())).init(),
    }
}

fn main() -> ExitCode {
    let cli = {
        use clap::{CommandFactory, FromArgMatches};
        let command = Cli::command().mut_subcommand("serve", config::annotate_help);
        Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit())
    };
    // `serve` reads its settings (the log format among them) before any
    // log line; a bad setting is a usage error, reported as such.
    let command = match cli.command {
        Command::Serve(args) => {
            let print = args.print_config;
            let misspelt = config::misspelt_variables(
                std::env::vars_os().filter_map(|(name, _)| name.into_string().ok()),
            );
            match args.settings() {
                Ok(settings) if print => {
                    for warning in &misspelt {
                        eprintln!("warning: {warning}");
                    }
                    return finish(output::write_stdout(format_args!("{}", settings.to_toml())));
                }
                Ok(settings) => {
                    init_logging(settings.log_format, "info");
                    for warning in &misspelt {
                        tracing::warn!("{warning}");
                    }
                    Run::Serve(Box::new(settings))
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            // Into a buffer first: `generate` panics when its writer fails,
            // which a closed pipe makes it do.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "heartbeater", &mut script);
            return finish(output::write_stdout(format_args!(
                "{}",
                String::from_utf8_lossy(&script)
            )));
        }
        Command::Demo(args) => {
            // The demo shows every transition itself.
            init_logging(
                config::LogFormat::Text,
                "warn,heartbeater::transitions=error",
            );
            Run::Other(Box::new(Command::Demo(args)))
        }
        other => {
            init_logging(config::LogFormat::Text, "warn");
            Run::Other(Box::new(other))
        }
    };
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
        let command = match command {
            Run::Serve(settings) => return serve::run(*settings).await,
            Run::Other(command) => *command,
        };
        match command {
            Command::Serve(_) | Command::Completions { .. } => Ok(()),
            Command::Demo(args) => demo::run(args).await,
            Command::Register(args) => admin::register(args).await,
            Command::Deregister(args) => admin::deregister(args).await,
            Command::Peers(args) => admin::peers(args).await,
            Command::Watch(args) => admin::watch(args).await,
            Command::Heartbeat(args) => admin::heartbeat(args).await,
            Command::Publish(args) => topics::publish(args).await,
            Command::Subscribe(args) => topics::subscribe(args).await,
        }
    });
    // Dropping the runtime would wait for its blocking threads, and one of
    // them may sit in a read of stdin that nothing can interrupt (`publish`
    // stopped by a signal while its terminal is still open): the command is
    // over, so they are left to the process's exit.
    runtime.shutdown_background();
    finish(result)
}

/// A mistake in the command line that only a command itself can see (a
/// combination of values): reported like clap's own, with status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The exit status of a command's outcome, with its error on stderr; a
/// reader that went away ends the command quietly.
fn finish(result: anyhow::Result<()>) -> ExitCode {
    use std::io::Write as _;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<output::ReaderGone>().is_some() => {
            ExitCode::from(output::READER_GONE_STATUS)
        }
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            // `eprintln!` would panic if stderr is closed too.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
