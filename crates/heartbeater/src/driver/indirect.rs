//! The monitor's side of indirect probes: before a peer is convicted, other
//! nodes are asked to heartbeat it, and their answers are checked.
//!
//! The table opens a round when a peer's misses would convict it
//! ([`heartbeater_core::PeerTable::take_suspects`]). For each, up to `k`
//! helpers are chosen at random among the peers this node sees ALIVE over
//! datagrams (never the suspect, never a peer itself reached only
//! indirectly), and each is sent a request signed with the cluster key. The
//! request's nonce is the round's own probe token, sealed under this run's
//! secret: an answer is believed only if its nonce opens to a round still
//! in flight and it comes from a helper asked in that round; the table then
//! checks the identity, epoch and timing as for any reply. With no helper
//! (or no cluster key, or no address for the suspect) the round fails at
//! once and the peer is convicted as without indirect probes.

use std::collections::HashMap;
use std::net::SocketAddr;

use heartbeater_core::indirect::{ProbeAnswer, ProbeRequest};
use heartbeater_core::{Arrival, Keyring, Path, PeerKey, PeerTable, ProbeId, Reply, ReplyVerdict};

use crate::driver::datagram_path::DatagramPath;
use crate::node::counters::Counters;

/// Helpers asked per round by default: memberlist's choice, enough that one
/// bad link of a helper does not decide, few enough to cost little.
pub const DEFAULT_INDIRECT_PROBES: usize = 3;
/// Most helpers a round may ask.
pub const MAX_INDIRECT_PROBES: usize = 8;
/// Rounds whose helpers are remembered before the settled ones are swept.
const ASKED_SWEEP: usize = 1024;

/// What the answer to a request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answered {
    /// It kept the peer alive.
    Kept,
    /// A genuine answer that settled nothing: the round was over, or the
    /// helper saw another identity or an older epoch.
    Unmatched,
    /// Not a nonce of this node, or not from a helper asked.
    Forged,
}

/// The rounds in flight and whom each asked.
pub(crate) struct IndirectProbes {
    k: usize,
    rng: u64,
    asked: HashMap<ProbeId, Vec<(SocketAddr, PeerKey)>>,
    suspects: Vec<ProbeId>,
    helpers: Vec<PeerKey>,
    buf: Vec<u8>,
}

impl IndirectProbes {
    /// Asks up to `k` helpers per round; `seed` starts the choice.
    pub(crate) fn new(k: usize, seed: u64) -> Self {
        Self {
            k: k.min(MAX_INDIRECT_PROBES),
            rng: seed | 1,
            asked: HashMap::new(),
            suspects: Vec::new(),
            helpers: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// Whether rounds are asked for at all.
    pub(crate) fn enabled(&self) -> bool {
        self.k > 0
    }

    /// Sends the requests of every round the table opened; a round that
    /// cannot ask anyone fails at once.
    pub(crate) fn ask(
        &mut self,
        table: &mut PeerTable,
        path: Option<&DatagramPath>,
        counters: &Counters,
    ) {
        table.take_suspects(&mut self.suspects);
        if self.suspects.is_empty() {
            return;
        }
        if self.asked.len() >= ASKED_SWEEP {
            self.asked.retain(|id, _| table.in_flight(*id));
        }
        let t = crate::driver::now();
        let mut suspects = std::mem::take(&mut self.suspects);
        for id in suspects.drain(..) {
            Counters::add(&counters.indirect_rounds);
            let asked = match path {
                Some(path) => self.ask_one(id, table, path, counters),
                None => Vec::new(),
            };
            if asked.is_empty() {
                Counters::add(&counters.indirect_unavailable);
                table.on_path_failed(id, Path::Indirect, t);
            } else {
                self.asked.insert(id, asked);
            }
        }
        self.suspects = suspects;
    }

    fn ask_one(
        &mut self,
        id: ProbeId,
        table: &PeerTable,
        path: &DatagramPath,
        counters: &Counters,
    ) -> Vec<(SocketAddr, PeerKey)> {
        let (Some(keyring), Some(target), Some(spec)) = (
            path.keyring(),
            path.address(id.peer()),
            table.spec(id.peer()),
        ) else {
            return Vec::new();
        };
        let mut helpers = std::mem::take(&mut self.helpers);
        helpers.clear();
        let rng = &mut self.rng;
        table.pick_helpers(
            id.peer(),
            self.k,
            |n| below(rng, n),
            |key| path.answering_address(key).is_some(),
            &mut helpers,
        );
        ProbeRequest {
            nonce: path.seal(id),
            timeout: spec.detector.timeout,
            target,
            expected: &spec.peer_id,
        }
        .seal(keyring, &mut self.buf);
        let mut asked = Vec::with_capacity(helpers.len());
        for &helper in &helpers {
            let Some(addr) = path.answering_address(helper) else {
                continue;
            };
            if path.socket.try_send_to(&self.buf, addr).is_ok() {
                Counters::add(&counters.indirect_requests);
                asked.push((addr, helper));
            }
        }
        self.helpers = helpers;
        asked
    }

    /// An answer that came from `from`, signed with the cluster key.
    pub(crate) fn on_answer(
        &mut self,
        answer: &ProbeAnswer<'_>,
        from: SocketAddr,
        arrival: Arrival,
        table: &mut PeerTable,
        path: &DatagramPath,
    ) -> Answered {
        let Some(id) = path.open(&answer.nonce) else {
            return Answered::Forged;
        };
        let Some(helper) = self
            .asked
            .get(&id)
            .and_then(|asked| asked.iter().find(|(addr, _)| *addr == from))
            .map(|&(_, key)| key)
        else {
            return Answered::Forged;
        };
        let via = match table.spec(helper) {
            Some(spec) => spec.peer_id.clone(),
            None => return Answered::Unmatched,
        };
        let verdict = table.on_indirect_reply(
            id,
            arrival,
            Reply {
                responder_id: answer.identity,
                responder_epoch: answer.epoch,
            },
            &via,
        );
        if verdict == ReplyVerdict::Accepted {
            self.asked.remove(&id);
            Answered::Kept
        } else {
            Answered::Unmatched
        }
    }

    /// A round timed out or failed: its helpers are forgotten.
    pub(crate) fn forget(&mut self, id: ProbeId) {
        self.asked.remove(&id);
    }
}

/// A number below `n`, by xorshift: the choice of helpers needs spread,
/// not secrecy (the answers are what is authenticated).
fn below(rng: &mut u64, n: usize) -> usize {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    usize::try_from(*rng % u64::try_from(n.max(1)).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// Whether a node may ask for indirect probes: only when the answers can be
/// authenticated (a cluster key on the datagram path).
pub(crate) fn usable(k: usize, keyring: Option<&Keyring>, udp: bool) -> bool {
    k > 0 && keyring.is_some() && udp
}
