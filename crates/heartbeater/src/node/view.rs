//! The peers' statuses as the driver publishes them, for every reader.
//!
//! Readers (`ListPeers`, `WatchPeers` snapshots, `/api/peers`, the
//! library's `peers()`) never wait for the driver, and the driver never does
//! work for them that grows with the registry: once per wake-up it hands
//! over what changed in that wake-up ([`PeerTable::take_changes`], within a
//! budget), and readers copy what they need from here, a bounded chunk per
//! lock. A status read here may lag the driver by a wake-up, never more
//! than the budget takes to catch up.
//!
//! [`PeerTable::take_changes`]: heartbeater_core::PeerTable::take_changes

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use heartbeater_core::{Pages, PeerState, PeerStatus, PublishedStatus, StateCounts, StatusChange};

/// Statuses copied per read lock: a reader of a large page or of every peer
/// takes the lock once per chunk, so that the driver's next update never
/// waits behind more than one chunk per reader.
const CHUNK: usize = 256;

/// The published statuses, ordered by peer id, and how many are in each
/// state.
#[derive(Debug, Default)]
pub(crate) struct PeerView {
    inner: RwLock<Inner>,
}

/// The statuses in their published form: each shares its registration
/// (id, host, timing) with the driver's table, and only the state and the
/// counters are the view's own, so the view costs little per peer.
///
/// Kept by the table's slot number, so that the update each heartbeat
/// brings (a send, a reply) is one indexed write; the ids' order, which
/// pages follow, changes only when a peer comes or goes.
#[derive(Debug, Default)]
struct Inner {
    statuses: Pages<PublishedStatus>,
    /// Slot by id, in id order.
    order: BTreeMap<Arc<str>, u32>,
    counts: StateCounts,
}

fn count(counts: &mut StateCounts, state: PeerState, add: bool) {
    let n = match state {
        PeerState::Unknown => &mut counts.unknown,
        PeerState::Alive => &mut counts.alive,
        PeerState::Unreachable => &mut counts.unreachable,
    };
    *n = if add {
        n.saturating_add(1)
    } else {
        n.saturating_sub(1)
    };
}

impl Inner {
    fn upsert(&mut self, status: PublishedStatus) {
        count(&mut self.counts, status.state(), true);
        let slot = status.slot();
        let id = status.peer_id().clone();
        match self.statuses.set(slot as usize, status) {
            // Most changes are to a known peer (a heartbeat sent, a reply).
            Some(old) if old.peer_id() == &id => {
                count(&mut self.counts, old.state(), false);
                return;
            }
            // The slot went to another peer before this view heard of the
            // first one's removal.
            Some(old) => {
                count(&mut self.counts, old.state(), false);
                self.order.remove(&**old.peer_id());
            }
            None => {}
        }
        // The same peer in another slot (removed and registered again).
        if let Some(before) = self.order.insert(id.clone(), slot) {
            if before != slot {
                if let Some(old) = self.statuses.take(before as usize) {
                    count(&mut self.counts, old.state(), false);
                }
            }
        }
    }

    fn remove(&mut self, peer_id: &str) {
        if let Some(slot) = self.order.remove(peer_id) {
            if let Some(old) = self.statuses.take(slot as usize) {
                count(&mut self.counts, old.state(), false);
            }
        }
    }
}

impl PeerView {
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces every status: at the start of a driver, from its table.
    pub(crate) fn reset(&self, statuses: Vec<PublishedStatus>) {
        // Built at once, the B-tree's nodes are full; inserted one by one
        // in id order, they would be about half full.
        let mut inner = Inner {
            order: statuses
                .iter()
                .map(|s| (s.peer_id().clone(), s.slot()))
                .collect(),
            ..Inner::default()
        };
        for s in statuses {
            count(&mut inner.counts, s.state(), true);
            inner.statuses.set(s.slot() as usize, s);
        }
        *self.write() = inner;
    }

    /// Applies `changes` in order, under one write lock, and empties it.
    pub(crate) fn apply(&self, changes: &mut Vec<StatusChange>) {
        if changes.is_empty() {
            return;
        }
        let mut inner = self.write();
        for change in changes.drain(..) {
            match change {
                StatusChange::Upsert(status) => inner.upsert(status),
                StatusChange::Removed(id) => inner.remove(&id),
            }
        }
    }

    /// Up to `limit` statuses of the peers whose id sorts after `after`,
    /// ordered by id, and whether more follow. A page is read a chunk at a
    /// time: a change between two chunks shows the way it would between two
    /// pages (no peer skipped or repeated).
    pub(crate) fn page(&self, after: Option<&str>, limit: usize) -> (Vec<PeerStatus>, bool) {
        let limit = limit.max(1);
        let mut page: Vec<PeerStatus> = Vec::with_capacity(limit.min(CHUNK));
        let mut cursor: Option<String> = after.map(str::to_owned);
        loop {
            let want = (limit - page.len()).min(CHUNK);
            let (chunk, more) = {
                let inner = self.read();
                let lower = match &cursor {
                    Some(id) => Bound::Excluded(id.as_str()),
                    None => Bound::Unbounded,
                };
                let statuses = &inner.statuses;
                let mut range = inner
                    .order
                    .range::<str, _>((lower, Bound::Unbounded))
                    .filter_map(|(_, &slot)| statuses.get(slot as usize));
                let chunk: Vec<PeerStatus> = range
                    .by_ref()
                    .take(want)
                    .map(PublishedStatus::to_status)
                    .collect();
                (chunk, range.next().is_some())
            };
            cursor = chunk.last().map(|s| s.peer_id.clone());
            page.extend(chunk);
            if !more || page.len() >= limit {
                return (page, more);
            }
        }
    }

    /// Every status, ordered by id, read a chunk at a time.
    pub(crate) fn all(&self) -> Vec<PeerStatus> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (chunk, more) = self.page(after.as_deref(), CHUNK);
            after = chunk.last().map(|s| s.peer_id.clone());
            all.extend(chunk);
            if !more {
                return all;
            }
        }
    }

    /// How many peers are in each state.
    pub(crate) fn counts(&self) -> StateCounts {
        self.read().counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heartbeater_core::{DetectorConfig, Path, PeerSpec, PeerTable, Reply};
    use std::time::{Duration, Instant};

    fn table(ids: &[&str]) -> PeerTable {
        let mut t = PeerTable::new();
        for id in ids {
            let detector =
                DetectorConfig::new(Duration::from_millis(100), None, None).expect("config");
            t.upsert(
                PeerSpec::new(id, "127.0.0.1", 9, detector).expect("spec"),
                Instant::now(),
            );
        }
        t
    }

    fn ids(statuses: &[PeerStatus]) -> Vec<&str> {
        statuses.iter().map(|s| s.peer_id.as_str()).collect()
    }

    fn upserts(t: &mut PeerTable) -> Vec<StatusChange> {
        let mut changes = Vec::new();
        t.take_changes(10_000, &mut changes);
        changes.retain(|c| matches!(c, StatusChange::Upsert(_)));
        changes
    }

    #[test]
    fn a_slot_taken_by_another_peer_or_a_peer_in_another_slot_leaves_one_status_each() {
        let mut t = table(&["a", "b"]);
        let view = PeerView::default();
        view.apply(&mut upserts(&mut t));
        // "a" goes and "c" takes its slot; the view hears of "c" first.
        t.remove("a");
        let mut removal = Vec::new();
        t.take_changes(0, &mut removal);
        let detector = DetectorConfig::new(Duration::from_millis(100), None, None).unwrap();
        let c = PeerSpec::new("c", "127.0.0.1", 9, detector).unwrap();
        t.upsert(c, Instant::now());
        view.apply(&mut upserts(&mut t));
        assert_eq!(ids(&view.all()), ["b", "c"]);
        assert_eq!(view.counts().unknown, 2);
        // The late removal of "a" changes nothing.
        view.apply(&mut removal);
        assert_eq!(ids(&view.all()), ["b", "c"]);
        // "b" comes back in another slot before its removal is heard of.
        t.remove("b");
        t.take_changes(0, &mut Vec::new());
        let d = PeerSpec::new("d", "127.0.0.1", 9, detector).unwrap();
        t.upsert(d, Instant::now());
        let b = PeerSpec::new("b", "127.0.0.1", 10, detector).unwrap();
        t.upsert(b, Instant::now());
        let mut changes = upserts(&mut t);
        changes.retain(|c| matches!(c, StatusChange::Upsert(s) if &**s.peer_id() == "b"));
        view.apply(&mut changes);
        assert_eq!(ids(&view.all()), ["b", "c"], "one status for b");
        assert_eq!(view.all()[0].port, 10, "the new registration");
        assert_eq!(view.counts().unknown, 2);
    }

    #[test]
    fn pages_follow_the_ids_across_chunks() {
        let names: Vec<String> = (0..600).map(|i| format!("p{i:04}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut t = table(&refs);
        let view = PeerView::default();
        let mut changes = Vec::new();
        assert_eq!(t.take_changes(10_000, &mut changes), 0);
        view.apply(&mut changes);

        let (page, more) = view.page(None, 500);
        assert!(more);
        assert_eq!(page.len(), 500);
        assert_eq!(ids(&page)[..2], ["p0000", "p0001"]);
        let (rest, more) = view.page(Some("p0499"), 500);
        assert!(!more);
        assert_eq!(ids(&rest)[0], "p0500");
        assert_eq!(rest.len(), 100);
        assert_eq!(view.all().len(), 600);
        assert_eq!(view.counts().unknown, 600);

        t.remove("p0001");
        assert_eq!(t.take_changes(10, &mut changes), 0);
        view.apply(&mut changes);
        assert_eq!(ids(&view.page(None, 2).0), ["p0000", "p0002"]);
        assert_eq!(view.counts().unknown, 599);

        // A known peer's new state moves it from one count to the other.
        let now = Instant::now();
        let mut due = Vec::new();
        t.poll_due(now + Duration::from_secs(1), &mut due);
        let probe = due.iter().find(|p| t.key_of("p0000") == Some(p.id.peer()));
        let probe = probe.expect("p0000 is due");
        t.mark_sent(probe.id, Path::Datagram, false);
        let reply = Reply {
            responder_id: "p0000",
            responder_epoch: 1,
        };
        t.on_reply(probe.id, Path::Datagram, probe.sent_at, reply);
        t.take_changes(10_000, &mut changes);
        view.apply(&mut changes);
        let counts = view.counts();
        assert_eq!((counts.unknown, counts.alive), (598, 1));
        assert_eq!(view.all().len(), 599);
    }
}
