//! `instructions` (on request): instructions the node executes per
//! acknowledged heartbeat, counted by `valgrind --tool=callgrind`. Counts
//! of instructions repeat from run to run where times drift with the
//! machine's load, so this is the figure to compare across commits.
//!
//! The node runs under callgrind (about fifty times slower), so the load is
//! one it carries there: 200 peers every 200 ms, 1,000 heartbeats a
//! second. Counting starts once every peer is alive and covers a fixed
//! window; what the node did in it (all its threads, user space only: the
//! kernel's share of a system call is not counted) is divided by the
//! heartbeats acknowledged in it.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use super::{node_client, register_all, responders, wait_all_alive};
use crate::child::Helper;
use crate::report::Row;

const PEERS: usize = 200;
const PERIOD_MS: i64 = 200;

/// Runs `callgrind_control` with `args` on `pid`.
fn control(args: &[&str], pid: u32) -> anyhow::Result<()> {
    let status = std::process::Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .context("callgrind_control (Debian's valgrind) is needed")?;
    anyhow::ensure!(status.success(), "callgrind_control {args:?} failed");
    Ok(())
}

/// The instruction total of the newest dump in `dir`.
fn dumped_total(dir: &Path) -> anyhow::Result<u64> {
    let mut newest: Option<(std::time::SystemTime, std::path::PathBuf)> = None;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let modified = entry.metadata()?.modified()?;
        if newest.as_ref().is_none_or(|(t, _)| modified > *t) {
            newest = Some((modified, entry.path()));
        }
    }
    let (_, path) = newest.context("callgrind wrote no dump")?;
    let text = std::fs::read_to_string(&path)?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no total in {}", path.display()))
}

async fn acked(node: &mut Helper) -> anyhow::Result<u64> {
    node.ask("work").await?["acked"]
        .as_u64()
        .context("the node reports no acked count")
}

pub async fn run(s: &super::Settings) -> anyhow::Result<Vec<Row>> {
    let window = if s.quick {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(10)
    };
    let (_responders, groups) = responders(PEERS, PEERS).await?;
    let peers: Vec<(u16, String)> = groups.into_iter().flatten().collect();
    // The dumps stay where `HEARTBEATER_BENCH_CALLGRIND_DIR` says, for
    // `callgrind_annotate` to show where the instructions went.
    let dir = tempfile::tempdir()?;
    let dir = match std::env::var_os("HEARTBEATER_BENCH_CALLGRIND_DIR") {
        Some(kept) => {
            std::fs::create_dir_all(&kept)?;
            std::path::PathBuf::from(kept)
        }
        None => dir.path().to_owned(),
    };
    let out = dir.join("callgrind.out");
    let exe = std::env::current_exe()?;
    let exe = exe.to_string_lossy();
    let out_arg = format!("--callgrind-out-file={}", out.display());
    let mut node = Helper::start_under(
        &["valgrind", "--tool=callgrind", "--quiet", &out_arg],
        &[&exe, "node"],
    )
    .await
    .context("starting a node under valgrind (Debian's valgrind package)")?;
    let pid = node.pid()?;
    let client = node_client(node.ready["addr"].as_str().unwrap_or_default())?;
    register_all(&client, &peers, PERIOD_MS).await?;
    wait_all_alive(&mut node, PEERS, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    control(&["--zero"], pid)?;
    let a0 = acked(&mut node).await?;
    tokio::time::sleep(window).await;
    let a1 = acked(&mut node).await?;
    control(&["--dump"], pid)?;
    let total = dumped_total(&dir)?;
    let acks = a1.saturating_sub(a0);
    anyhow::ensure!(acks > 0, "no heartbeat acknowledged under callgrind");
    let offered = PEERS as f64 * 1000.0 / PERIOD_MS as f64 * window.as_secs_f64();
    Ok(vec![
        Row::new(
            "instructions",
            "per_ack",
            total as f64 / acks as f64,
            "instructions",
            "half of 2026-12-03's",
        ),
        Row::new(
            "instructions",
            "acked_share",
            acks as f64 / offered,
            "of offered",
            "~1",
        ),
    ])
}
