//! Building a node's table from its registry at start: the store reads and
//! validates the records on one thread while this one schedules them, so
//! that a node restarting with a million peers pays for the slower of the
//! two, not for both one after the other.

use std::sync::mpsc;
use std::time::Instant;

use heartbeater_core::{PeerSpec, PeerTable, ValidationError};

use crate::node::quarantine::QuarantinedPeer;
use crate::node::spec_of_record;
use crate::store::{RegistryStore, StoreError, UnreadablePeer};

/// Records handed from the reading thread at a time: enough to keep the
/// channel's cost out of the way, little enough that scheduling starts at
/// once.
const CHUNK: usize = 4096;

/// Chunks in flight between the two threads: the reader never gets more
/// than this far ahead, so a fast store does not hold the whole registry
/// twice in memory.
const IN_FLIGHT: usize = 4;

/// One stored peer, validated: its registration and remembered epoch, or
/// why it cannot be monitored.
type Validated = (Result<PeerSpec, (String, ValidationError)>, Option<u64>);

/// Every stored peer that validates, scheduled in a fresh table as of
/// `now`; the others, quarantined, with the records that do not decode.
pub(crate) fn restore_table(
    store: &dyn RegistryStore,
    now: Instant,
) -> Result<(PeerTable, Vec<QuarantinedPeer>), StoreError> {
    let mut table = PeerTable::new();
    table.reserve(store.peer_count_hint());
    let mut quarantined = Vec::new();
    let (tx, rx) = mpsc::sync_channel::<Vec<Validated>>(IN_FLIGHT);
    let unreadable: Result<Vec<UnreadablePeer>, StoreError> = std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let mut chunk = Vec::with_capacity(CHUNK);
            let read = store.for_each_peer(&mut |record| {
                let spec = spec_of_record(&record).map_err(|e| (record.peer_id.clone(), e));
                chunk.push((spec, record.last_epoch));
                if chunk.len() >= CHUNK {
                    // A closed channel is this thread's caller gone: the
                    // rest is not needed.
                    let _ = tx.send(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)));
                }
            });
            if !chunk.is_empty() {
                let _ = tx.send(chunk);
            }
            read
        });
        for chunk in rx {
            for (spec, epoch) in chunk {
                match spec {
                    Ok(spec) => {
                        table.restore(spec, epoch, now);
                    }
                    Err((peer_id, e)) => quarantined.push(QuarantinedPeer {
                        peer_id,
                        reason: format!("invalid registration: {e}"),
                    }),
                }
            }
        }
        // The reader panicking is a bug in it, not something the store
        // can cause: its panic goes on here, as if it had run on this
        // thread.
        reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
    quarantined.extend(unreadable?.into_iter().map(|u| QuarantinedPeer {
        peer_id: u.display_id(),
        reason: u.reason,
    }));
    quarantined.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
    Ok((table, quarantined))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::{MemoryStore, PeerRecord};

    fn record(id: &str, freq_ms: u64) -> PeerRecord {
        PeerRecord {
            peer_id: id.into(),
            host: "127.0.0.1".into(),
            port: 9,
            heartbeat_freq: Duration::from_millis(freq_ms),
            timeout: Duration::from_millis(freq_ms),
            max_missed: 3,
            registered_at_micros: 0,
            last_epoch: None,
            kind: Default::default(),
            rise: 1,
        }
    }

    #[test]
    fn every_valid_peer_is_scheduled_with_its_epoch_and_the_rest_quarantined() {
        let store = MemoryStore::new();
        // More than a chunk, so that several cross between the threads.
        let n = CHUNK * 2 + 17;
        for i in 0..n {
            store.put_peer(&record(&format!("p{i:05}"), 100)).unwrap();
        }
        store.record_epoch("p00003", 9).unwrap();
        // A period of 0 does not validate.
        store.put_peer(&record("bad", 0)).unwrap();
        let (table, quarantined) = restore_table(&store, Instant::now()).unwrap();
        assert_eq!(table.len(), n);
        let status = table.status("p00003").unwrap();
        assert_eq!(status.epoch, Some(9));
        assert_eq!(table.status(&format!("p{:05}", n - 1)).unwrap().epoch, None);
        assert_eq!(quarantined.len(), 1);
        assert_eq!(quarantined[0].peer_id, "bad");
        assert!(quarantined[0].reason.starts_with("invalid registration"));
    }
}
