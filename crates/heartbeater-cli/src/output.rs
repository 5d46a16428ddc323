//! Rendering of statuses and events, as text for people and JSON lines for
//! programs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use heartbeater::proto::{self, PeerEventKind, PeerState};
use serde_json::json;

/// Whether to write colour codes to `stream`: only to a terminal, never
/// with `NO_COLOR` set (https://no-color.org).
pub fn colour(stream: &impl std::io::IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
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

/// The peers as an aligned table (no borders: it reads like `ps`, and
/// greps and `column -t` keep working); the state in colour when `colour`.
pub fn peers_table(peers: &[proto::PeerStatus], colour: bool) -> String {
    use comfy_table::{Cell, CellAlignment, Color, Table};
    let mut table = Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    if colour {
        table.enforce_styling();
    } else {
        table.force_no_tty();
    }
    table.set_header([
        "PEER ID", "ADDRESS", "STATE", "EPOCH", "FREQ", "SENT", "ACKED", "MISSED", "LAST RTT",
    ]);
    for p in peers {
        let addr = if p.peer_host.contains(':') {
            format!("[{}]:{}", p.peer_host, p.peer_port)
        } else {
            format!("{}:{}", p.peer_host, p.peer_port)
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
        table.add_row(vec![
            Cell::new(&p.peer_id),
            Cell::new(addr),
            state_cell,
            right(p.epoch.map_or("-".into(), |e| e.to_string())),
            right(format!("{}ms", p.heartbeat_freq_millis)),
            right(p.heartbeats_sent.to_string()),
            right(p.heartbeats_acked.to_string()),
            right(format!("{}/{}", p.missed, p.max_missed)),
            right(rtt(p.last_rtt_micros)),
        ]);
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
        e.peer_id,
        state_name(e.state)
    );
    if let Some(epoch) = e.epoch {
        line.push_str(&format!(" epoch={epoch}"));
    }
    if let Some(prev) = e.previous_epoch {
        line.push_str(&format!(" previous_epoch={prev}"));
    }
    if !e.observed_id.is_empty() {
        line.push_str(&format!(" observed_id={}", e.observed_id));
    }
    line
}
