//! Writes N peers straight into a data directory's registry, for trying a
//! node with a large registry (`heartbeater serve --data-dir DIR` restores
//! them all) without registering each over the network.
//!
//! `cargo run -p heartbeater --example fill_registry -- DIR N`
//!
//! The peers are `peer-000000` ... at 127.0.0.1:9 (the discard port),
//! heartbeated once an hour.

use std::time::Duration;

use heartbeater::store::PeerRecord;
use heartbeater::{RegistryOp, RegistryStore, RocksDbStore};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(n)) = (args.next(), args.next()) else {
        eprintln!("usage: fill_registry DIR N");
        std::process::exit(2);
    };
    let n: usize = n.parse()?;
    let store = RocksDbStore::open(&dir)?;
    let ops: Vec<RegistryOp> = (0..n)
        .map(|i| {
            RegistryOp::Put(PeerRecord {
                peer_id: format!("peer-{i:06}"),
                host: "127.0.0.1".into(),
                port: 9,
                heartbeat_freq: Duration::from_secs(3600),
                timeout: Duration::from_secs(3600),
                max_missed: 3,
                registered_at_micros: 0,
                last_epoch: None,
                kind: Default::default(),
                rise: 1,
            })
        })
        .collect();
    for chunk in ops.chunks(10_000) {
        store.apply(chunk)?;
    }
    println!("{n} peers written to {dir}");
    Ok(())
}
