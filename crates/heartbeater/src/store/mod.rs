//! The peer registry's durable home.
//!
//! A node keeps three things across restarts: its identity, its epoch and the
//! peers registered with it. [`RegistryStore`] is the small synchronous
//! interface to wherever they live; [`RocksDbStore`] is the default and
//! [`MemoryStore`] the twin for tests and ephemeral nodes. Both pass the same
//! conformance suite (`tests/store_conformance.rs`).
//!
//! Calls block (a synced RocksDB write waits for the disk), so async code
//! calls them through `spawn_blocking`.

mod codec;
mod memory;
mod registry;
mod rocks;

pub use memory::MemoryStore;
pub use registry::{
    LoadedPeers, NodeMeta, PeerRecord, RegistryOp, RegistryStore, StoreError, UnreadablePeer,
};
pub use rocks::RocksDbStore;
