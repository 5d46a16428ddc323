//! What a peer costs the table, in heap bytes. The allocator counts every
//! allocation, so the figure does not depend on the machine's load the way
//! RSS does; the bound is the table's share of the per-peer budget in
//! docs/BENCHMARKS.md ("Where a peer's bytes go").

use std::alloc::System;
use std::time::{Duration, Instant};

use heartbeater_core::{DetectorConfig, PeerSpec, PeerTable};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const PEERS: usize = 100_000;

/// glibc's cost of one allocation beyond the bytes asked for: an 8-byte
/// header and rounding to 16, about 16 bytes on average.
const PER_ALLOCATION: isize = 16;

/// A registration as a fleet has them: every peer its own address.
fn spec(i: usize) -> PeerSpec {
    let config = DetectorConfig::new(Duration::from_secs(1), None, None).unwrap();
    let host = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
    PeerSpec::new(&format!("peer-{i:06}"), &host, 7946, config).unwrap()
}

fn live_bytes(region: &Region<'_, System>) -> isize {
    let s = region.change();
    let allocations = s.allocations as isize - s.deallocations as isize;
    s.bytes_allocated as isize - s.bytes_deallocated as isize
        + s.bytes_reallocated
        + allocations * PER_ALLOCATION
}

#[test]
fn a_monitored_peer_costs_the_table_at_most_its_budget() {
    let specs: Vec<PeerSpec> = (0..PEERS).map(spec).collect();
    let t0 = Instant::now();
    let region = Region::new(GLOBAL);
    let mut table = PeerTable::new();
    for s in specs {
        table.upsert(s, t0);
    }
    // Two wake-ups of a driver: every peer with a heartbeat in flight, the
    // changes and events taken each time.
    for _ in 0..2 {
        let mut due = Vec::new();
        table.poll_due(t0, &mut due);
        table.take_changes(usize::MAX, &mut Vec::new());
        let _ = table.drain_events().count();
    }
    assert_eq!(table.len(), PEERS);
    // What the table holds is what dropping it gives back.
    let held = live_bytes(&region);
    drop(table);
    let per_peer = (held - live_bytes(&region)) as f64 / PEERS as f64;
    eprintln!("table: {per_peer:.0} bytes per peer at {PEERS} peers");
    assert!(per_peer <= 500.0, "{per_peer:.0} bytes per peer");
}
