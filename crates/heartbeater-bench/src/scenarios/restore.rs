//! `restore`: a node built on a data directory holding 100,000 peers, until
//! every one is scheduled; against opening the same RocksDB and reading the
//! records alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use heartbeater::store::{PeerRecord, RegistryStore, RocksDbStore};
use heartbeater::HeartbeatServer;

use crate::report::Row;

const PEERS: usize = 100_000;
const BASELINE: &str = "RocksDB open + read 100k records";

fn populate(dir: &std::path::Path) -> anyhow::Result<()> {
    let store = Arc::new(RocksDbStore::open(dir)?);
    let threads = 64;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let store = store.clone();
                scope.spawn(move || -> anyhow::Result<()> {
                    for i in (t..PEERS).step_by(threads) {
                        store.put_peer(&PeerRecord {
                            peer_id: format!("peer-{i:06}"),
                            host: "127.0.0.1".into(),
                            port: 9,
                            heartbeat_freq: Duration::from_secs(1),
                            timeout: Duration::from_secs(1),
                            max_missed: 3,
                            registered_at_micros: 0,
                            last_epoch: None,
                            kind: Default::default(),
                            rise: 1,
                        })?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("populate thread panicked"))?
        })
    })
}

pub fn run() -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    populate(dir.path())?;
    // The first open replays the write-ahead log of the 100,000 puts into
    // table files; done once here, so that the baseline and the node both
    // open the same settled directory.
    drop(RocksDbStore::open(dir.path())?);

    let t = Instant::now();
    let store = RocksDbStore::open(dir.path())?;
    let n = store.load_peers()?.records.len();
    let raw = t.elapsed();
    drop(store);
    anyhow::ensure!(n == PEERS, "populated {n} peers");

    let t = Instant::now();
    let server = HeartbeatServer::builder().data_dir(dir.path()).build()?;
    let ours = t.elapsed();
    // Not started: the answer comes from the table the build restored.
    let scheduled = tokio::runtime::Handle::current()
        .block_on(server.peer_counts())
        .total();
    anyhow::ensure!(scheduled == PEERS, "restored {scheduled} peers");
    Ok(vec![Row::new(
        "restore",
        "seconds_100k",
        ours.as_secs_f64(),
        "s",
        "<= 1.0",
    )
    .against(BASELINE, raw.as_secs_f64())])
}
