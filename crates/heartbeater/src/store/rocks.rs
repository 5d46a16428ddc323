//! The RocksDB registry store, the default.
//!
//! Column families: `meta` (key `node`: identity and epoch), `peers` (key: the
//! peer id, value: its registration) and `peer_epochs` (key: the peer id,
//! value: the last epoch seen, 8 bytes big-endian). Epochs live apart from the
//! registrations so that learning an epoch, which happens at run time without
//! any caller waiting, never rewrites (or resurrects) a registration.
//!
//! Acknowledged writes go through a synced WAL; concurrent synced writes from
//! several threads are grouped into one fsync by RocksDB's write leader, and
//! [`RegistryStore::apply`] makes a whole group of changes one synced write.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rocksdb::{
    ColumnFamily, DBCompressionType, DBRecoveryMode, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};

use super::codec;
use super::registry::{
    LoadedPeers, NodeMeta, PeerRecord, RegistryOp, RegistryStore, StoreError, UnreadablePeer,
};

const CF_META: &str = "meta";
const CF_PEERS: &str = "peers";
const CF_EPOCHS: &str = "peer_epochs";
const META_KEY: &[u8] = b"node";

/// A registry in a RocksDB database under a data directory.
pub struct RocksDbStore {
    db: DB,
    /// Kept for the statistics it shares with `db` (the WAL sync count).
    opts: Options,
    path: PathBuf,
}

impl std::fmt::Debug for RocksDbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksDbStore")
            .field("path", &self.path)
            .finish()
    }
}

impl RocksDbStore {
    /// Opens (creating if needed) the registry in `path`. Fails with a typed
    /// error naming the path when it is a file, in use by another node,
    /// unwritable or corrupt.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if path.exists() && !path.is_dir() {
            return Err(StoreError::NotADirectory { path });
        }
        std::fs::create_dir_all(&path).map_err(|e| StoreError::Io {
            path: path.clone(),
            detail: format!("cannot create: {e}"),
        })?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(DBCompressionType::None);
        // The registry is small; keep RocksDB's own footprint small too.
        opts.set_keep_log_file_num(2);
        opts.set_max_log_file_size(1 << 20);
        opts.set_max_background_jobs(1);
        opts.set_max_open_files(64);
        // Memtables: RocksDB's default is 64 MiB per column family (two of
        // them each before a stall), sized for bulk stores. A registry under
        // steady registration churn would hold ~100 MiB of memtables it
        // never needs; 4 MiB each, 16 MiB across all, flushes small files
        // instead.
        opts.set_write_buffer_size(4 << 20);
        opts.set_db_write_buffer_size(16 << 20);
        // Every acknowledged change was synced before its answer, so the
        // only damage a crash can leave in the WAL is an incomplete last
        // record, one nobody was told about: that is tolerated. Anything
        // else (a bad checksum before the end) refuses to open. RocksDB's
        // default, point-in-time recovery, would instead stop replaying at
        // the damage and open without every acknowledged change after it.
        opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
        // Paranoid checks (the default, stated because the corruption tests
        // count on it) make a bad checksum found while opening an error
        // rather than a record skipped. A truncated SST file is caught by
        // RocksDB's own size check against the MANIFEST at open.
        opts.set_paranoid_checks(true);
        // Counters only (no timers, no histograms): the WAL sync count is
        // how a test proves that every acknowledged change was synced.
        opts.enable_statistics();
        opts.set_statistics_level(rocksdb::statistics::StatsLevel::ExceptHistogramOrTimers);
        let db = DB::open_cf(&opts, &path, [CF_META, CF_PEERS, CF_EPOCHS])
            .map_err(|e| open_error(&path, e))?;
        Ok(Self { db, opts, path })
    }

    /// How many times RocksDB has synced its write-ahead log since this
    /// store was opened: every acknowledged registry change is behind one.
    pub fn wal_syncs(&self) -> u64 {
        self.opts
            .get_ticker_count(rocksdb::statistics::Ticker::WalFileSynced)
    }

    /// Writes everything in memory to SST files and syncs them, so the
    /// directory no longer needs its WAL to hold the registry: before a
    /// file-level backup, and in tests that damage SST files.
    pub fn flush(&self) -> Result<(), StoreError> {
        for name in [CF_META, CF_PEERS, CF_EPOCHS] {
            self.db.flush_cf(self.cf(name)?).map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily, StoreError> {
        self.db.cf_handle(name).ok_or_else(|| StoreError::Corrupt {
            path: self.path.clone(),
            detail: format!("column family {name} missing"),
        })
    }

    /// A remembered epoch as stored; a bad one is forgotten, not fatal: it
    /// is advisory (it may be lost in a crash anyway).
    fn stored_epoch(&self, key: &[u8], value: &[u8]) -> Option<u64> {
        match codec::decode_epoch(value) {
            Ok(epoch) => Some(epoch),
            Err(_) => {
                tracing::warn!(
                    peer = %String::from_utf8_lossy(key),
                    "stored peer epoch does not decode; forgotten"
                );
                None
            }
        }
    }

    fn io(&self, e: rocksdb::Error) -> StoreError {
        let detail = e.to_string();
        if e.kind() == rocksdb::ErrorKind::Corruption {
            return StoreError::Corrupt {
                path: self.path.clone(),
                detail,
            };
        }
        StoreError::Io {
            path: self.path.clone(),
            detail,
        }
    }

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }

    fn write_synced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(|e| self.io(e))
    }

    fn epoch_of(&self, peer_id: &str) -> Result<Option<u64>, StoreError> {
        match self
            .db
            .get_cf(self.cf(CF_EPOCHS)?, peer_id)
            .map_err(|e| self.io(e))?
        {
            Some(bytes) => codec::decode_epoch(&bytes)
                .map(Some)
                .map_err(|d| self.corrupt(d)),
            None => Ok(None),
        }
    }
}

fn open_error(path: &Path, e: rocksdb::Error) -> StoreError {
    let detail = e.to_string();
    let path = path.to_path_buf();
    if detail.contains("lock") || detail.contains("LOCK") {
        StoreError::InUse { path, detail }
    } else if detail.contains("Corruption") || detail.contains("corrupt") {
        StoreError::Corrupt { path, detail }
    } else {
        StoreError::Io { path, detail }
    }
}

impl RegistryStore for RocksDbStore {
    fn load_meta(&self) -> Result<Option<NodeMeta>, StoreError> {
        match self
            .db
            .get_cf(self.cf(CF_META)?, META_KEY)
            .map_err(|e| self.io(e))?
        {
            Some(bytes) => codec::decode_meta(&bytes)
                .map(Some)
                .map_err(|d| self.corrupt(d)),
            None => Ok(None),
        }
    }

    fn save_meta(&self, meta: &NodeMeta) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META)?, META_KEY, codec::encode_meta(meta));
        self.write_synced(batch)
    }

    fn put_peer(&self, record: &PeerRecord) -> Result<(), StoreError> {
        self.apply(&[RegistryOp::Put(record.clone())])
    }

    fn delete_peer(&self, peer_id: &str) -> Result<bool, StoreError> {
        let existed = self
            .db
            .get_pinned_cf(self.cf(CF_PEERS)?, peer_id)
            .map_err(|e| self.io(e))?
            .is_some();
        self.apply(&[RegistryOp::Delete(peer_id.to_owned())])?;
        Ok(existed)
    }

    fn apply(&self, ops: &[RegistryOp]) -> Result<(), StoreError> {
        let peers = self.cf(CF_PEERS)?;
        let epochs = self.cf(CF_EPOCHS)?;
        // Whether each id is registered once the ops before it are applied:
        // a put of a new id must forget an epoch left from an older
        // registration, even when the delete is earlier in the same batch.
        let mut registered: HashMap<&str, bool> = HashMap::new();
        let mut batch = WriteBatch::default();
        for op in ops {
            match op {
                RegistryOp::Put(record) => {
                    let id = record.peer_id.as_str();
                    let existed = match registered.get(id) {
                        Some(known) => *known,
                        None => self
                            .db
                            .get_pinned_cf(peers, id)
                            .map_err(|e| self.io(e))?
                            .is_some(),
                    };
                    batch.put_cf(peers, id, codec::encode_peer(record));
                    if !existed {
                        batch.delete_cf(epochs, id);
                    }
                    registered.insert(id, true);
                }
                RegistryOp::Delete(id) => {
                    batch.delete_cf(peers, id);
                    batch.delete_cf(epochs, id);
                    registered.insert(id, false);
                }
            }
        }
        self.write_synced(batch)
    }

    fn get_peer(&self, peer_id: &str) -> Result<Option<PeerRecord>, StoreError> {
        let Some(bytes) = self
            .db
            .get_cf(self.cf(CF_PEERS)?, peer_id)
            .map_err(|e| self.io(e))?
        else {
            return Ok(None);
        };
        let mut record = codec::decode_peer(&bytes).map_err(|d| self.corrupt(d))?;
        record.last_epoch = self.epoch_of(peer_id)?;
        Ok(Some(record))
    }

    fn load_peers(&self) -> Result<LoadedPeers, StoreError> {
        let mut records = Vec::with_capacity(self.peer_count_hint());
        let unreadable = self.for_each_peer(&mut |record| records.push(record))?;
        Ok(LoadedPeers {
            records,
            unreadable,
        })
    }

    fn for_each_peer(
        &self,
        each: &mut dyn FnMut(PeerRecord),
    ) -> Result<Vec<UnreadablePeer>, StoreError> {
        let mut unreadable = Vec::new();
        // Both column families are ordered by peer id: the epochs are
        // joined to the records in one pass over each, as they are read.
        let mut epochs = self
            .db
            .iterator_cf(self.cf(CF_EPOCHS)?, IteratorMode::Start)
            .peekable();
        for item in self.db.iterator_cf(self.cf(CF_PEERS)?, IteratorMode::Start) {
            // An error here is RocksDB failing to read a block (a checksum
            // or an I/O error): the store itself is damaged, and a partial
            // registry would silently drop peers, so the load fails.
            let (key, value) = item.map_err(|e| self.io(e))?;
            let mut last_epoch = None;
            while let Some(next) = epochs.peek() {
                let epoch_key = match next {
                    Ok((k, _)) => k,
                    Err(_) => {
                        if let Some(Err(e)) = epochs.next() {
                            return Err(self.io(e));
                        }
                        continue;
                    }
                };
                match (**epoch_key).cmp(&*key) {
                    std::cmp::Ordering::Less => {
                        // The epoch of a peer no longer registered.
                        epochs.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if let Some(Ok((k, v))) = epochs.next() {
                            last_epoch = self.stored_epoch(&k, &v);
                        }
                        break;
                    }
                    std::cmp::Ordering::Greater => break,
                }
            }
            match codec::decode_peer(&value) {
                Ok(mut record) if record.peer_id.as_bytes() == &*key => {
                    record.last_epoch = last_epoch;
                    each(record);
                }
                Ok(record) => unreadable.push(UnreadablePeer {
                    key: key.into_vec(),
                    reason: format!("record names peer {:?}, not its key", record.peer_id),
                }),
                Err(reason) => unreadable.push(UnreadablePeer {
                    key: key.into_vec(),
                    reason,
                }),
            }
        }
        Ok(unreadable)
    }

    fn peer_count_hint(&self) -> usize {
        let Ok(peers) = self.cf(CF_PEERS) else {
            return 0;
        };
        self.db
            .property_int_value_cf(peers, "rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0)
            // An estimate: a damaged or odd one must not size a huge table.
            .min(1 << 24)
    }

    fn record_epoch(&self, peer_id: &str, epoch: u64) -> Result<(), StoreError> {
        let registered = self
            .db
            .get_pinned_cf(self.cf(CF_PEERS)?, peer_id)
            .map_err(|e| self.io(e))?
            .is_some();
        if registered {
            self.db
                .put_cf(self.cf(CF_EPOCHS)?, peer_id, codec::encode_epoch(epoch))
                .map_err(|e| self.io(e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn record(id: &str) -> PeerRecord {
        PeerRecord {
            peer_id: id.into(),
            host: "127.0.0.1".into(),
            port: 9,
            heartbeat_freq: Duration::from_millis(100),
            timeout: Duration::from_millis(100),
            max_missed: 3,
            registered_at_micros: 0,
            last_epoch: None,
            kind: Default::default(),
            rise: 1,
        }
    }

    /// An epoch left behind by a peer that is gone (a deregistration racing
    /// the epoch's write) is passed over: the peers after it still get
    /// their own.
    #[test]
    fn an_epoch_without_its_peer_does_not_hold_back_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksDbStore::open(dir.path()).unwrap();
        for id in ["b", "d"] {
            store.put_peer(&record(id)).unwrap();
        }
        let epochs = store.cf(CF_EPOCHS).unwrap();
        store
            .db
            .put_cf(epochs, "a", codec::encode_epoch(1))
            .unwrap();
        store
            .db
            .put_cf(epochs, "c", codec::encode_epoch(3))
            .unwrap();
        store.record_epoch("b", 2).unwrap();
        store.record_epoch("d", 4).unwrap();
        let mut seen = Vec::new();
        store
            .for_each_peer(&mut |r| seen.push((r.peer_id, r.last_epoch)))
            .unwrap();
        assert_eq!(
            seen,
            vec![("b".to_owned(), Some(2)), ("d".to_owned(), Some(4))]
        );
    }
}
