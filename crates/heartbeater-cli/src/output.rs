//! Rendering of statuses and events, as text for people and JSON lines for
//! programs.

/// Standard output went away: its reader closed the pipe (`peers --json |
/// head -1`). Not a failure of the command: `main` ends quietly with the
/// status a shell gives a process stopped by `SIGPIPE`.
#[derive(Debug, thiserror::Error)]
#[error("standard output closed by its reader")]
pub struct ReaderGone;

/// The exit status for [`ReaderGone`]: 128 + SIGPIPE, what `sh` reports for
/// a command stopped by a closed pipe, so `set -o pipefail` scripts see the
/// same as with any other Unix tool.
pub const READER_GONE_STATUS: u8 = 141;

/// Writes to standard output and flushes, so a closed pipe shows up at
/// once as [`ReaderGone`] instead of a panic (`println!` panics on it).
/// Other write errors (a full disk) are real failures and say so.
pub fn write_stdout(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(ReaderGone.into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to standard output")),
    }
}

/// `print!` for commands: returns early from the calling function with
/// [`ReaderGone`] when the reader went away.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))?
    };
}

/// `println!` for commands: returns early from the calling function with
/// [`ReaderGone`] when the reader went away.
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))?
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))?
    };
}
pub(crate) use {out, outln};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use heartbeater::proto::{self, PeerEventKind, PeerState};
use serde_json::json;

/// Whether to write colour codes to `stream`: only to a terminal, never
/// with `NO_COLOR` set (https://no-color.org).
pub fn colour(stream: &impl std::io::IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A string that came from the network (an identity a node or a peer
/// sent, a peer id or host read back from a node), made safe to print on a
/// terminal: control characters and text-reordering characters escaped as
/// `\u{1b}`, backslashes doubled. Every such string goes through this on
/// its way to the screen, so that no node or peer can move the cursor,
/// clear the screen or retitle the window of an operator.
pub fn untrusted(text: &str) -> std::borrow::Cow<'_, str> {
    heartbeater::identity::printable(text)
}

pub fn state_name(state: i32) -> &'static str {
    match PeerState::try_from(state) {
        Ok(PeerState::Alive) => "ALIVE",
        Ok(PeerState::Unreachable) => "UNREACHABLE",
        _ => "UNKNOWN",
    }
}

pub fn event_name(kind: i32) -> &'static str {
    match PeerEventKind::try_from(kind) {
        Ok(PeerEventKind::Registered) => "Registered",
        Ok(PeerEventKind::PeerUp) => "PeerUp",
        Ok(PeerEventKind::PeerDown) => "PeerDown",
        Ok(PeerEventKind::Restarted) => "Restarted",
        Ok(PeerEventKind::IdentityMismatch) => "IdentityMismatch",
        Ok(PeerEventKind::Deregistered) => "Deregistered",
        Ok(PeerEventKind::Snapshot) => "Snapshot",
        Ok(PeerEventKind::ReachedIndirectly) => "ReachedIndirectly",
        _ => "Unknown",
    }
}

pub fn rfc3339_micros(micros: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn rtt(micros: Option<u64>) -> String {
    match micros {
        Some(us) if us >= 10_000 => format!("{:.0}ms", us as f64 / 1000.0),
        Some(us) => format!("{:.2}ms", us as f64 / 1000.0),
        None => "-".into(),
    }
}

/// The MISSED column: consecutive heartbeats without a valid reply
/// against the number that convicts, capped at that number (`3+/3`):
/// past it the count only says how long the peer has been down, which
/// `82/3` made read like a broken limit. `peers --json` has the exact count.
fn missed(missed: u32, max_missed: u32) -> String {
    if missed > max_missed {
        format!("{max_missed}+/{max_missed}")
    } else {
        format!("{missed}/{max_missed}")
    }
}

/// The peers as an aligned table (no borders: it reads like `ps`, and
/// greps and `column -t` keep working); the state in colour when `colour`.
/// A last NOTE column, only when a peer needs one, says whom a peer
/// answers as when replies at its address carry another identity, or
/// through which nodes it is reached when only they reach it.
pub fn peers_table(peers: &[proto::PeerStatus], colour: bool) -> String {
    use comfy_table::{Cell, CellAlignment, Color, Table};
    let mut table = Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    if colour {
        table.enforce_styling();
    } else {
        table.force_no_tty();
    }
    let noted = peers
        .iter()
        .any(|p| p.answers_as.is_some() || p.reached_indirectly);
    let mut header = vec![
        "PEER ID", "ADDRESS", "STATE", "EPOCH", "FREQ", "SENT", "ACKED", "MISSED", "LAST RTT",
    ];
    if noted {
        header.push("NOTE");
    }
    table.set_header(header);
    for p in peers {
        let host = untrusted(&p.peer_host);
        let addr = if host.contains(':') {
            format!("[{host}]:{}", p.peer_port)
        } else {
            format!("{host}:{}", p.peer_port)
        };
        let state = state_name(p.state);
        let mut state_cell = Cell::new(state);
        if colour {
            state_cell = state_cell.fg(match PeerState::try_from(p.state) {
                Ok(PeerState::Alive) => Color::Green,
                Ok(PeerState::Unreachable) => Color::Red,
                _ => Color::DarkGrey,
            });
        }
        let right = |text: String| Cell::new(text).set_alignment(CellAlignment::Right);
        let mut row = vec![
            Cell::new(untrusted(&p.peer_id)),
            Cell::new(addr),
            state_cell,
            right(p.epoch.map_or("-".into(), |e| e.to_string())),
            right(crate::duration::format(Duration::from_millis(
                u64::try_from(p.heartbeat_freq_millis).unwrap_or(0),
            ))),
            right(p.heartbeats_sent.to_string()),
            right(p.heartbeats_acked.to_string()),
            right(missed(p.missed, p.max_missed)),
            right(rtt(p.last_rtt_micros)),
        ];
        if noted {
            row.push(Cell::new(note(p)));
        }
        table.add_row(row);
    }
    // The preset pads each cell by one space on both sides: keep two
    // spaces between columns and none at the margin.
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    let mut out: String = table
        .lines()
        .map(|l| format!("{}\n", l.trim_end()))
        .collect();
    if out.is_empty() {
        out.push('\n');
    }
    out
}

/// What the NOTE column says of `p`.
fn note(p: &proto::PeerStatus) -> String {
    if let Some(id) = &p.answers_as {
        return format!("answers as {}", untrusted(id));
    }
    if p.reached_indirectly {
        let via: Vec<String> = p.reached_via.iter().map(|v| untrusted(v).into()).collect();
        return if via.is_empty() {
            "reached only indirectly".into()
        } else {
            format!("reached only via {}", via.join(", "))
        };
    }
    String::new()
}

pub fn peer_json(p: &proto::PeerStatus) -> serde_json::Value {
    json!({
        "peer_id": p.peer_id,
        "host": p.peer_host,
        "port": p.peer_port,
        "state": state_name(p.state),
        "epoch": p.epoch,
        "heartbeats_sent": p.heartbeats_sent,
        "heartbeats_acked": p.heartbeats_acked,
        "last_rtt_micros": p.last_rtt_micros,
        "heartbeat_freq_millis": p.heartbeat_freq_millis,
        "timeout_millis": p.timeout_millis,
        "max_missed": p.max_missed,
        "missed": p.missed,
        "detector": match proto::Detector::try_from(p.detector) {
            Ok(proto::Detector::PhiAccrual) => "phi",
            _ => "count",
        },
        "rise": p.rise,
        "answers_as": p.answers_as,
        "reached_indirectly": p.reached_indirectly,
        "reached_via": p.reached_via,
    })
}

pub fn event_json(e: &proto::PeerEvent) -> serde_json::Value {
    json!({
        "event": event_name(e.kind),
        "peer_id": e.peer_id,
        "server_id": e.server_id,
        "state": state_name(e.state),
        "epoch": e.epoch,
        "previous_epoch": e.previous_epoch,
        "observed_id": (!e.observed_id.is_empty()).then_some(&e.observed_id),
        "timestamp": rfc3339_micros(e.timestamp_micros),
        "timestamp_micros": e.timestamp_micros,
    })
}

/// One event as a line: timestamp, kind (in colour when `colour`: down
/// and mismatches red, up green, restarts yellow), peer, state, epochs.
pub fn event_text(e: &proto::PeerEvent, colour: bool) -> String {
    let kind = format!("{:<16}", event_name(e.kind));
    let kind = match PeerEventKind::try_from(e.kind) {
        _ if !colour => kind,
        Ok(PeerEventKind::PeerDown | PeerEventKind::IdentityMismatch) => {
            format!("\x1b[31;1m{kind}\x1b[0m")
        }
        Ok(PeerEventKind::PeerUp) => format!("\x1b[32m{kind}\x1b[0m"),
        Ok(PeerEventKind::Restarted) => format!("\x1b[33m{kind}\x1b[0m"),
        _ => kind,
    };
    let mut line = format!(
        "{} {kind} {} state={}",
        rfc3339_micros(e.timestamp_micros),
        untrusted(&e.peer_id),
        state_name(e.state)
    );
    if let Some(epoch) = e.epoch {
        line.push_str(&format!(" epoch={epoch}"));
    }
    if let Some(prev) = e.previous_epoch {
        line.push_str(&format!(" previous_epoch={prev}"));
    }
    if !e.observed_id.is_empty() {
        line.push_str(&format!(" observed_id={}", untrusted(&e.observed_id)));
    }
    line
}
