//! One conformance suite, run against every registry store.

use std::sync::Arc;
use std::time::Duration;

use heartbeater::store::{
    MemoryStore, NodeMeta, PeerRecord, RegistryOp, RegistryStore, RocksDbStore,
};

/// Opens the store under test; calling it again after dropping every earlier
/// handle "restarts" it on the same data.
trait Harness {
    fn open(&self) -> Arc<dyn RegistryStore>;
}

struct Memory(MemoryStore);
impl Harness for Memory {
    fn open(&self) -> Arc<dyn RegistryStore> {
        Arc::new(self.0.clone())
    }
}

struct Rocks(tempfile::TempDir);
impl Harness for Rocks {
    fn open(&self) -> Arc<dyn RegistryStore> {
        Arc::new(RocksDbStore::open(self.0.path()).expect("open rocksdb"))
    }
}

fn record(id: &str, port: u16) -> PeerRecord {
    PeerRecord {
        peer_id: id.into(),
        host: "127.0.0.1".into(),
        port,
        heartbeat_freq: Duration::from_millis(100),
        timeout: Duration::from_millis(150),
        max_missed: 3,
        registered_at_micros: 1_700_000_000_000_000,
        last_epoch: None,
        kind: Default::default(),
        rise: 1,
    }
}

fn meta_is_empty_then_survives_a_reopen(h: &dyn Harness) {
    let s = h.open();
    assert_eq!(s.load_meta().unwrap(), None);
    let meta = NodeMeta {
        identity: "node-a".into(),
        epoch: 3,
    };
    s.save_meta(&meta).unwrap();
    drop(s);
    assert_eq!(h.open().load_meta().unwrap(), Some(meta));
}

fn peers_round_trip_in_id_order(h: &dyn Harness) {
    let s = h.open();
    s.put_peer(&record("b", 2)).unwrap();
    s.put_peer(&record("a", 1)).unwrap();
    s.put_peer(&record("c", 3)).unwrap();
    drop(s);
    let s = h.open();
    let ids: Vec<_> = s
        .load_peers()
        .unwrap()
        .records
        .into_iter()
        .map(|p| p.peer_id)
        .collect();
    assert_eq!(ids, vec!["a", "b", "c"]);
    assert_eq!(s.get_peer("b").unwrap(), Some(record("b", 2)));
    assert_eq!(s.get_peer("zz").unwrap(), None);
}

fn put_replaces_and_delete_removes(h: &dyn Harness) {
    let s = h.open();
    s.put_peer(&record("p", 1)).unwrap();
    s.put_peer(&record("p", 2)).unwrap();
    assert_eq!(s.load_peers().unwrap().records, vec![record("p", 2)]);
    assert!(s.delete_peer("p").unwrap());
    assert!(!s.delete_peer("p").unwrap(), "second delete finds nothing");
    drop(s);
    assert!(h.open().load_peers().unwrap().records.is_empty());
}

fn epochs_are_remembered_for_registered_peers_only(h: &dyn Harness) {
    let s = h.open();
    s.put_peer(&record("p", 1)).unwrap();
    s.record_epoch("p", 7).unwrap();
    s.record_epoch("unknown", 9).unwrap();
    assert_eq!(s.get_peer("p").unwrap().unwrap().last_epoch, Some(7));
    assert_eq!(
        s.get_peer("unknown").unwrap(),
        None,
        "recording an epoch registers nothing"
    );
    // An update keeps the epoch; a deregistration forgets it.
    s.put_peer(&record("p", 5)).unwrap();
    assert_eq!(s.load_peers().unwrap().records[0].last_epoch, Some(7));
    drop(s);
    let s = h.open();
    assert_eq!(s.get_peer("p").unwrap().unwrap().last_epoch, Some(7));
    s.delete_peer("p").unwrap();
    s.put_peer(&record("p", 1)).unwrap();
    assert_eq!(s.get_peer("p").unwrap().unwrap().last_epoch, None);
}

fn many_concurrent_writers_all_land(h: &dyn Harness) {
    let s = h.open();
    std::thread::scope(|scope| {
        for t in 0..8 {
            let s = s.clone();
            scope.spawn(move || {
                for i in 0..50 {
                    s.put_peer(&record(&format!("t{t}-{i:03}"), 1)).unwrap();
                }
            });
        }
    });
    drop(s);
    assert_eq!(h.open().load_peers().unwrap().records.len(), 400);
}

fn a_group_write_applies_in_order_and_survives_a_reopen(h: &dyn Harness) {
    let s = h.open();
    s.put_peer(&record("kept", 1)).unwrap();
    s.record_epoch("kept", 3).unwrap();
    s.put_peer(&record("reborn", 1)).unwrap();
    s.record_epoch("reborn", 4).unwrap();
    s.apply(&[
        RegistryOp::Put(record("new", 1)),
        RegistryOp::Put(record("gone", 1)),
        RegistryOp::Delete("gone".into()),
        RegistryOp::Put(record("kept", 9)),
        RegistryOp::Delete("reborn".into()),
        RegistryOp::Put(record("reborn", 2)),
        RegistryOp::Delete("never-there".into()),
    ])
    .unwrap();
    drop(s);
    let peers = h.open().load_peers().unwrap().records;
    let summary: Vec<_> = peers
        .iter()
        .map(|p| (p.peer_id.as_str(), p.port, p.last_epoch))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("kept", 9, Some(3)),
            ("new", 1, None),
            // Deleted then registered again in one write: a new
            // registration, so the old epoch is forgotten.
            ("reborn", 2, None),
        ]
    );
}

fn an_empty_group_write_changes_nothing(h: &dyn Harness) {
    let s = h.open();
    s.put_peer(&record("p", 1)).unwrap();
    s.apply(&[]).unwrap();
    assert_eq!(s.load_peers().unwrap().records, vec![record("p", 1)]);
}

/// Read as they come, the peers arrive in id order, each with its own
/// epoch: the ones with none between ones with one, and none of a peer
/// that is gone.
fn peers_read_as_they_come_carry_their_own_epochs(h: &dyn Harness) {
    let s = h.open();
    for id in ["a", "b", "c", "d", "e"] {
        s.put_peer(&record(id, 1)).unwrap();
    }
    s.record_epoch("a", 1).unwrap();
    s.record_epoch("c", 3).unwrap();
    s.record_epoch("d", 4).unwrap();
    s.delete_peer("d").unwrap();
    s.record_epoch("e", 5).unwrap();
    drop(s);
    let s = h.open();
    let mut seen = Vec::new();
    let unreadable = s
        .for_each_peer(&mut |r| seen.push((r.peer_id, r.last_epoch)))
        .unwrap();
    assert!(unreadable.is_empty());
    let expected = [("a", Some(1)), ("b", None), ("c", Some(3)), ("e", Some(5))];
    let expected: Vec<(String, Option<u64>)> =
        expected.iter().map(|&(id, e)| (id.to_owned(), e)).collect();
    assert_eq!(seen, expected);
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[test] fn $name() { super::$name(&super::Memory(super::MemoryStore::new())); })*
        }
        mod rocksdb {
            $(#[test] fn $name() { super::$name(&super::Rocks(tempfile::tempdir().unwrap())); })*
        }
    };
}

conformance!(
    meta_is_empty_then_survives_a_reopen,
    peers_round_trip_in_id_order,
    put_replaces_and_delete_removes,
    epochs_are_remembered_for_registered_peers_only,
    many_concurrent_writers_all_land,
    a_group_write_applies_in_order_and_survives_a_reopen,
    an_empty_group_write_changes_nothing,
    peers_read_as_they_come_carry_their_own_epochs,
);
