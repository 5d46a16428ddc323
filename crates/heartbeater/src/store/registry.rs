//! What a registry store keeps and the interface every store implements.
//! A leaf of `store`: the stores build on it.

use std::path::PathBuf;
use std::time::Duration;

/// Who this node is: stored once, read at every start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMeta {
    /// The node's identity, stable across restarts: its UUID, or the name
    /// its operator gave it at its first start.
    pub identity: String,
    /// The epoch of the latest start.
    pub epoch: u64,
}

/// One registered peer, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    /// The peer's identity.
    pub peer_id: String,
    /// IP address or DNS name.
    pub host: String,
    /// Port of the peer's node.
    pub port: u16,
    /// Time between heartbeats.
    pub heartbeat_freq: Duration,
    /// How long a reply is accepted.
    pub timeout: Duration,
    /// Consecutive misses that make the peer unreachable.
    pub max_missed: u32,
    /// When it was (last) registered, in microseconds since the Unix epoch.
    pub registered_at_micros: i64,
    /// The last epoch this node saw the peer answer with.
    pub last_epoch: Option<u64>,
    /// The rule the peer is judged by.
    pub kind: heartbeater_core::DetectorKind,
    /// Consecutive valid replies that bring it back from unreachable.
    pub rise: u32,
}

impl PeerRecord {
    /// The record of a validated registration, made at
    /// `registered_at_micros` (microseconds since the Unix epoch), with no
    /// epoch seen yet: every field is the spec's, so what is stored is what
    /// was checked.
    pub fn from_spec(spec: &heartbeater_core::PeerSpec, registered_at_micros: i64) -> Self {
        let d = spec.detector;
        Self {
            peer_id: spec.peer_id.to_string(),
            host: spec.host.clone(),
            port: spec.port,
            heartbeat_freq: d.heartbeat_freq,
            timeout: d.timeout,
            max_missed: d.max_missed.get(),
            registered_at_micros,
            last_epoch: None,
            kind: d.kind,
            rise: d.rise.get(),
        }
    }
}

/// A stored peer record that cannot be monitored: its bytes do not decode
/// (written by a newer release, or damaged), or they decode to a
/// registration that fails validation. The rest of the registry loads
/// without it; the node reports it and lets it be deregistered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadablePeer {
    /// The record's key, as stored.
    pub key: Vec<u8>,
    /// What is wrong with it.
    pub reason: String,
}

impl UnreadablePeer {
    /// The key as a peer id, when it is one (valid UTF-8 and within the
    /// bounds of any stored id); only such a record can be deregistered by
    /// id.
    pub fn peer_id(&self) -> Option<&str> {
        let id = std::str::from_utf8(&self.key).ok()?;
        heartbeater_core::identity::within_stored_bounds(id).then_some(id)
    }

    /// How the record is named to an operator: its peer id, or the key in
    /// hex (`0x...`) when the key is not a peer id.
    pub fn display_id(&self) -> String {
        match self.peer_id() {
            Some(id) => id.to_owned(),
            None => {
                let mut out = String::with_capacity(2 + 2 * self.key.len());
                out.push_str("0x");
                for b in &self.key {
                    out.push_str(&format!("{b:02x}"));
                }
                out
            }
        }
    }
}

/// Every stored peer: the records that load, ordered by peer id, and the
/// ones that do not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedPeers {
    /// The peers that decode, ordered by peer id.
    pub records: Vec<PeerRecord>,
    /// The records that do not decode, ordered by key.
    pub unreadable: Vec<UnreadablePeer>,
}

/// One change to the registered peers, for [`RegistryStore::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryOp {
    /// Inserts or replaces a peer, as [`RegistryStore::put_peer`].
    Put(PeerRecord),
    /// Deletes a peer (absent is fine), as [`RegistryStore::delete_peer`].
    Delete(String),
}

/// A failure of the registry store. Each variant names the data directory, so
/// an operator knows where to look. `Clone` because one failed group write
/// is reported to every caller whose change was in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The data directory path exists but is not a directory.
    #[error("data directory {path}: exists and is not a directory")]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// Another process (or another node in this one) has the directory open.
    #[error("data directory {path}: already in use by another running node ({detail})")]
    InUse {
        /// The path given.
        path: PathBuf,
        /// What RocksDB said.
        detail: String,
    },
    /// The directory's contents cannot be read as a registry.
    #[error("data directory {path}: corrupt registry: {detail}")]
    Corrupt {
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Reading or writing the directory failed.
    #[error("data directory {path}: {detail}")]
    Io {
        /// The path given.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

/// Where a node keeps its identity, epoch and peers.
///
/// Writes that a caller is told about (`save_meta`, `put_peer`, `delete_peer`)
/// must be durable when they return: a registration acknowledged to a client
/// survives a crash of the node the instant after. `record_epoch` is advisory
/// and may be lost in a crash.
pub trait RegistryStore: Send + Sync + 'static {
    /// The stored identity and epoch, `None` on a new store.
    fn load_meta(&self) -> Result<Option<NodeMeta>, StoreError>;
    /// Stores identity and epoch, durably.
    fn save_meta(&self, meta: &NodeMeta) -> Result<(), StoreError>;
    /// Inserts or replaces a peer, durably. A new registration forgets any
    /// epoch remembered for an earlier registration of the same id.
    fn put_peer(&self, record: &PeerRecord) -> Result<(), StoreError>;
    /// Deletes a peer, durably. Returns whether it existed.
    fn delete_peer(&self, peer_id: &str) -> Result<bool, StoreError>;
    /// Applies `ops` in order, durably, with the same meaning as the single
    /// calls.
    ///
    /// This is how a node writes: concurrent registrations are grouped into
    /// one call, so a store that makes the whole slice one atomic, synced
    /// write (as [`RocksDbStore`] does) pays one disk flush per group instead
    /// of one per registration. The default applies them one by one, which
    /// is correct but neither atomic nor grouped.
    fn apply(&self, ops: &[RegistryOp]) -> Result<(), StoreError> {
        for op in ops {
            match op {
                RegistryOp::Put(record) => self.put_peer(record)?,
                RegistryOp::Delete(peer_id) => {
                    self.delete_peer(peer_id)?;
                }
            }
        }
        Ok(())
    }
    /// One peer.
    fn get_peer(&self, peer_id: &str) -> Result<Option<PeerRecord>, StoreError>;
    /// Every peer. A record that does not decode is returned in
    /// [`LoadedPeers::unreadable`] rather than failing the whole load: one
    /// damaged record must not take the registry down. A store that cannot
    /// be read at all (a corrupt file) is still an error.
    fn load_peers(&self) -> Result<LoadedPeers, StoreError>;
    /// Every peer that decodes, handed to `each` in id order as it is read,
    /// with its remembered epoch; returns the ones that do not decode, as
    /// [`RegistryStore::load_peers`] does. A node restoring its registry
    /// builds its table from these while the store still reads: a store
    /// that can read as it goes should say so here. The default reads them
    /// all first.
    fn for_each_peer(
        &self,
        each: &mut dyn FnMut(PeerRecord),
    ) -> Result<Vec<UnreadablePeer>, StoreError> {
        let loaded = self.load_peers()?;
        for record in loaded.records {
            each(record);
        }
        Ok(loaded.unreadable)
    }
    /// About how many peers are stored, for sizing what will hold them; 0
    /// when the store cannot tell cheaply. Never a bound on anything.
    fn peer_count_hint(&self) -> usize {
        0
    }
    /// Remembers the last epoch seen from a registered peer. Ignored for an
    /// unknown peer; not synced.
    fn record_epoch(&self, peer_id: &str, epoch: u64) -> Result<(), StoreError>;
}
