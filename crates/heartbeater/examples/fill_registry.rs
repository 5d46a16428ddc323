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
    let hourly = heartbeater::DetectorConfig::new(Duration::from_secs(3600), None, None)?;
    let ops = (0..n)
        .map(|i| {
            let spec = heartbeater::PeerSpec::new(&format!("peer-{i:06}"), "127.0.0.1", 9, hourly)?;
            Ok(RegistryOp::Put(PeerRecord::from_spec(&spec, 0)))
        })
        .collect::<Result<Vec<RegistryOp>, heartbeater::ValidationError>>()?;
    for chunk in ops.chunks(10_000) {
        store.apply(chunk)?;
    }
    println!("{n} peers written to {dir}");
    Ok(())
}
