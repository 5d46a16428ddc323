//! A damaged data directory: the node either starts with everything that
//! was acknowledged or refuses to start with an error naming the directory.
//! It never starts silently emptied or with acknowledged peers missing, and
//! one record it cannot read does not take the rest of the registry down.

use std::path::{Path, PathBuf};
use std::time::Duration;

use heartbeater::store::PeerRecord;
use heartbeater::{
    DeregisterPeerRequest, HeartbeatClient, HeartbeatServer, NodeError, RegistryStore,
    RocksDbStore, ServerError, StoreError,
};

mod common;

fn record(id: &str) -> PeerRecord {
    PeerRecord {
        peer_id: id.into(),
        host: "127.0.0.1".into(),
        port: 9,
        heartbeat_freq: Duration::from_secs(3600),
        timeout: Duration::from_secs(3600),
        max_missed: 3,
        registered_at_micros: 1,
        last_epoch: None,
        kind: Default::default(),
        rise: 1,
    }
}

/// A store in `dir` holding `peer-0` .. `peer-{n-1}`, each its own synced
/// write (one WAL record each), then closed.
fn fill(dir: &Path, n: usize) {
    let store = RocksDbStore::open(dir).unwrap();
    for i in 0..n {
        store.put_peer(&record(&format!("peer-{i}"))).unwrap();
    }
}

fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    out.sort();
    out
}

fn files_starting(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    out.sort();
    out
}

fn ids(dir: &Path) -> Vec<String> {
    RocksDbStore::open(dir)
        .unwrap()
        .load_peers()
        .unwrap()
        .records
        .into_iter()
        .map(|r| r.peer_id)
        .collect()
}

fn assert_refused_naming(dir: &Path) {
    let err = HeartbeatServer::builder()
        .data_dir(dir)
        .build()
        .expect_err("a damaged data directory must not open");
    assert!(
        matches!(err, ServerError::Store(StoreError::Corrupt { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&dir.display().to_string()),
        "the error names the directory: {err}"
    );
}

#[test]
fn a_truncated_sst_file_is_refused_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 50);
    let store = RocksDbStore::open(dir.path()).unwrap();
    store.flush().unwrap();
    drop(store);
    let ssts = files_ending(dir.path(), ".sst");
    assert!(!ssts.is_empty(), "the flush wrote SST files");
    for sst in &ssts {
        let len = std::fs::metadata(sst).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(sst).unwrap();
        file.set_len(len / 2).unwrap();
    }
    assert_refused_naming(dir.path());
}

#[test]
fn a_garbage_manifest_is_refused_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 10);
    let manifests = files_starting(dir.path(), "MANIFEST-");
    assert!(!manifests.is_empty());
    for manifest in &manifests {
        let len = std::fs::metadata(manifest).unwrap().len() as usize;
        let garbage: Vec<u8> = (0..len).map(|i| (i * 131 + 7) as u8).collect();
        std::fs::write(manifest, garbage).unwrap();
    }
    assert_refused_naming(dir.path());
}

/// A crash in the middle of a write leaves its WAL record incomplete. That
/// write was never acknowledged (its sync had not returned), so recovery
/// drops it and keeps every record before it.
#[test]
fn a_torn_last_wal_record_loses_that_record_only() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 10);
    let logs = files_ending(dir.path(), ".log");
    let wal = logs.last().expect("a WAL file");
    let len = std::fs::metadata(wal).unwrap().len();
    assert!(len > 100, "the puts are in the WAL ({len} bytes)");
    let file = std::fs::OpenOptions::new().write(true).open(wal).unwrap();
    file.set_len(len - 5).unwrap();
    drop(file);
    let expected: Vec<String> = (0..9).map(|i| format!("peer-{i}")).collect();
    assert_eq!(ids(dir.path()), expected);
}

/// Damage before the end of the WAL is not a torn write: records after it
/// were acknowledged. Replaying up to the damage and opening (RocksDB's
/// default, point-in-time recovery) would lose them without a word.
#[test]
fn damage_inside_the_wal_is_refused_not_replayed_past() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 10);
    let logs = files_ending(dir.path(), ".log");
    let wal = logs.last().expect("a WAL file");
    let mut bytes = std::fs::read(wal).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 4] {
        *b ^= 0x5a;
    }
    std::fs::write(wal, bytes).unwrap();
    assert_refused_naming(dir.path());
}

/// Writes `value` under `key` in the peers column family, bypassing the
/// store: what a newer release or a damaged disk could leave behind.
fn put_raw(dir: &Path, key: &[u8], value: &[u8]) {
    let opts = rocksdb::Options::default();
    let db = rocksdb::DB::open_cf(&opts, dir, ["meta", "peers", "peer_epochs"]).unwrap();
    let cf = db.cf_handle("peers").unwrap();
    db.put_cf(cf, key, value).unwrap();
    db.put_cf(db.cf_handle("peer_epochs").unwrap(), b"peer-a", [1, 2, 3])
        .unwrap();
}

#[tokio::test]
async fn an_unreadable_record_is_quarantined_listed_and_can_be_deregistered() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = RocksDbStore::open(dir.path()).unwrap();
        store.put_peer(&record("peer-a")).unwrap();
        store.put_peer(&record("peer-c")).unwrap();
        // Decodes, but a zero period is not a valid registration.
        let mut invalid = record("peer-d");
        invalid.heartbeat_freq = Duration::ZERO;
        store.put_peer(&invalid).unwrap();
    }
    // A record version this release does not know, and a key that is not a
    // peer id at all.
    put_raw(dir.path(), b"peer-b", &[9, 1, 2, 3]);
    put_raw(dir.path(), &[0xff, 0xfe], &[1, 0xff]);

    let node = common::node_on(dir.path(), 0).await;
    let monitored: Vec<String> = node.peers().await.into_iter().map(|p| p.peer_id).collect();
    assert_eq!(
        monitored,
        ["peer-a", "peer-c"],
        "the rest of the registry loads"
    );
    let quarantined: Vec<String> = node
        .quarantined_peers()
        .into_iter()
        .map(|q| q.peer_id)
        .collect();
    assert_eq!(quarantined, ["0xfffe", "peer-b", "peer-d"]);
    let reasons: Vec<String> = node
        .quarantined_peers()
        .into_iter()
        .map(|q| q.reason)
        .collect();
    assert!(
        reasons[1].contains("unknown record version 9"),
        "{reasons:?}"
    );
    assert!(reasons[2].contains("invalid registration"), "{reasons:?}");

    // ListPeers reports them on its first page.
    let addr = node.local_addr().unwrap();
    let client = HeartbeatClient::new("127.0.0.1", addr.port(), common::PATIENCE).unwrap();
    let listed = client.list_peers().await.unwrap();
    let listed: Vec<&str> = listed
        .quarantined
        .iter()
        .map(|q| q.peer_id.as_str())
        .collect();
    assert_eq!(listed, ["0xfffe", "peer-b", "peer-d"]);

    // Deregistering one removes it from disk and from the quarantine; a
    // second time it is unknown.
    client
        .deregister_peer(DeregisterPeerRequest {
            peer_id: "peer-b".into(),
        })
        .await
        .unwrap();
    let again = node
        .deregister_peer(DeregisterPeerRequest {
            peer_id: "peer-b".into(),
        })
        .await;
    assert!(matches!(again, Err(NodeError::UnknownPeer(_))), "{again:?}");
    // Registering one again replaces the bad record.
    node.register_peer(common::idle_peer("peer-d"))
        .await
        .unwrap();
    let quarantined: Vec<String> = node
        .quarantined_peers()
        .into_iter()
        .map(|q| q.peer_id)
        .collect();
    assert_eq!(quarantined, ["0xfffe"]);
    node.stop().await.unwrap();
    drop(node);

    let node = common::node_on(dir.path(), 0).await;
    let monitored: Vec<String> = node.peers().await.into_iter().map(|p| p.peer_id).collect();
    assert_eq!(monitored, ["peer-a", "peer-c", "peer-d"]);
    assert_eq!(node.quarantined_peers().len(), 1);
    node.stop().await.unwrap();
}
