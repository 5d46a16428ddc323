//! Which path each peer's heartbeats take: the datagram first, gRPC where
//! datagrams go unanswered.
//!
//! Per peer, one of three states:
//!
//! - **Probing**: the peer has not answered a datagram yet. Heartbeats go
//!   as datagrams only. One that goes unanswered is not held against the
//!   peer (it may just not speak UDP, or UDP may be filtered): it is
//!   forgotten, and the peer moves to *Both*.
//! - **Udp**: the last datagram was answered. Heartbeats go as datagrams
//!   only; a timeout is a miss, and moves the peer to *Both*.
//! - **Both**: datagrams go unanswered. Each heartbeat goes both ways, the
//!   gRPC call's outcome counts (whichever answer comes first wins), and the
//!   first pong moves the peer back to *Udp* and closes its gRPC channel.
//!
//! So a peer that answers datagrams costs its monitor a few dozen bytes and
//! two syscalls per heartbeat, a peer behind a UDP filter costs what the
//! gRPC path costs, and one lost datagram never makes a peer unreachable
//! by itself: the next heartbeat is also carried by gRPC.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use heartbeater_core::{Pages, PeerKey, PeerSpec, PeerTable, Probe, Reply};
use tokio::net::UdpSocket;

use crate::udp::{Datagram, Kind};

/// A name being resolved for the datagram path.
pub(crate) type Resolving = Pin<Box<dyn Future<Output = (PeerKey, Option<SocketAddr>)> + Send>>;

/// How long a name may take to resolve before the peer is left to gRPC
/// until its next silence.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Probing,
    Udp,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// A name not resolved yet.
    Unresolved,
    Resolving,
    Addr(SocketAddr),
    /// No address of this socket's family: gRPC only.
    Unusable,
}

#[derive(Debug)]
struct PeerPath {
    key: PeerKey,
    path: Path,
    target: Target,
    /// Highest heartbeat answered by a pong.
    last_pong_seq: u64,
}

/// When a datagram-only heartbeat times out, packed into 24 bytes (an
/// `Instant` and the fields unpacked take 40): a node holds one or two per
/// peer, 10,000 peers or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Expiry {
    /// Microseconds after the table's base; first, so the heap orders by it.
    at_micros: u64,
    key: u64,
    /// The heartbeat's sequence number, shifted left once; the low bit says
    /// whether a silence counts as a miss.
    seq_counts: u64,
}

impl Expiry {
    fn new(base: Instant, at: Instant, key: PeerKey, seq: u64, counts: bool) -> Self {
        // Rounded up: a heartbeat is never given up before its timeout.
        let micros = at.saturating_duration_since(base).as_nanos().div_ceil(1000);
        Self {
            at_micros: u64::try_from(micros).unwrap_or(u64::MAX),
            key: key.to_bits(),
            seq_counts: (seq << 1) | u64::from(counts),
        }
    }

    fn at(self, base: Instant) -> Instant {
        base + Duration::from_micros(self.at_micros)
    }

    fn key(self) -> PeerKey {
        PeerKey::from_bits(self.key)
    }

    fn seq(self) -> u64 {
        self.seq_counts >> 1
    }

    fn counts(self) -> bool {
        self.seq_counts & 1 == 1
    }
}

/// The datagram side of the node's driver: the socket, each peer's path,
/// and the timeouts of heartbeats sent as datagrams only.
pub(crate) struct PathTable {
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) identity: String,
    pub(crate) epoch: u64,
    local_v6: bool,
    /// Random per run; a pong must echo it, so a host that cannot see our
    /// pings cannot forge answers to them.
    nonce: u64,
    base: Instant,
    peers: Pages<PeerPath>,
    timeouts: BinaryHeap<Reverse<Expiry>>,
    out: Vec<u8>,
}

impl PathTable {
    pub(crate) fn new(socket: Arc<UdpSocket>, identity: String, epoch: u64) -> Self {
        let local_v6 = socket.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
        Self {
            socket,
            identity,
            epoch,
            local_v6,
            nonce: uuid::Uuid::new_v4().as_u64_pair().0,
            base: Instant::now(),
            peers: Pages::new(),
            timeouts: BinaryHeap::new(),
            out: Vec::with_capacity(crate::udp::MAX_DATAGRAM),
        }
    }

    /// When the earliest datagram-only heartbeat times out.
    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        self.timeouts.peek().map(|Reverse(e)| e.at(self.base))
    }

    fn entry(&mut self, key: PeerKey, spec: &PeerSpec) -> &mut PeerPath {
        let fresh = || {
            let target = match spec.host.parse::<IpAddr>() {
                Ok(ip) => family_fit(SocketAddr::new(ip, spec.port), self.local_v6)
                    .map_or(Target::Unusable, Target::Addr),
                Err(_) => Target::Unresolved,
            };
            PeerPath {
                key,
                path: Path::Probing,
                target,
                last_pong_seq: 0,
            }
        };
        let slot = self.peers.place(key.index());
        if !matches!(slot, Some(p) if p.key == key) {
            *slot = Some(fresh());
        }
        slot.get_or_insert_with(fresh)
    }

    fn current(&mut self, key: PeerKey) -> Option<&mut PeerPath> {
        self.peers.get_mut(key.index()).filter(|p| p.key == key)
    }

    /// Sends `probe` as a datagram where that is possible. Returns whether
    /// the caller must (also) send it over gRPC.
    pub(crate) fn send(
        &mut self,
        probe: &Probe,
        spec: &PeerSpec,
        now: Instant,
        resolving: &mut futures_util::stream::FuturesUnordered<Resolving>,
    ) -> bool {
        let local_v6 = self.local_v6;
        let entry = self.entry(probe.key, spec);
        let addr = match entry.target {
            Target::Addr(addr) => addr,
            Target::Unresolved => {
                entry.target = Target::Resolving;
                resolving.push(resolve(probe.key, spec.host.clone(), spec.port, local_v6));
                return true;
            }
            Target::Resolving | Target::Unusable => return true,
        };
        let path = entry.path;
        let mut token = [0u8; 32];
        token[0..8].copy_from_slice(&probe.key.to_bits().to_be_bytes());
        token[8..16].copy_from_slice(&probe.seq.to_be_bytes());
        let sent = probe
            .sent_at
            .saturating_duration_since(self.base)
            .as_nanos() as u64;
        token[16..24].copy_from_slice(&sent.to_be_bytes());
        token[24..32].copy_from_slice(&self.nonce.to_be_bytes());
        Datagram {
            kind: Kind::Ping,
            token,
            epoch: self.epoch,
            identity: &self.identity,
        }
        .encode(&mut self.out);
        if let Err(e) = self.socket.try_send_to(&self.out, addr) {
            // A full buffer, no route: gRPC carries this one.
            tracing::trace!(error = %e, %addr, "heartbeat datagram not sent");
            return true;
        }
        let deadline = now + spec.detector.timeout;
        match path {
            Path::Probing | Path::Udp => {
                let counts = path == Path::Udp;
                let expiry = Expiry::new(self.base, deadline, probe.key, probe.seq, counts);
                self.timeouts.push(Reverse(expiry));
                false
            }
            Path::Both => true,
        }
    }

    /// Settles every datagram-only heartbeat whose timeout has passed.
    pub(crate) fn expire(&mut self, now: Instant, table: &mut PeerTable) {
        while let Some(&Reverse(expiry)) = self.timeouts.peek() {
            if expiry.at(self.base) > now {
                break;
            }
            self.timeouts.pop();
            let (key, seq, counts) = (expiry.key(), expiry.seq(), expiry.counts());
            if counts {
                table.on_no_reply(key, seq, now);
            } else {
                table.forget(key, seq);
            }
            if let Some(entry) = self.current(key) {
                if entry.last_pong_seq < seq && entry.path != Path::Both {
                    entry.path = Path::Both;
                    if entry.target == Target::Resolving {
                        continue;
                    }
                    // A name may now point elsewhere: look it up again.
                    if matches!(table.spec(key), Some(s) if s.host.parse::<IpAddr>().is_err()) {
                        entry.target = Target::Unresolved;
                    }
                }
            }
        }
    }

    /// Applies a pong that arrived at `now`.
    pub(crate) fn on_pong(
        &mut self,
        pong: &Datagram<'_>,
        now: Instant,
        table: &mut PeerTable,
        grpc: &mut crate::monitor::GrpcChannels,
    ) {
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&pong.token[i * 8..i * 8 + 8]);
            u64::from_be_bytes(b)
        };
        if word(3) != self.nonce {
            return;
        }
        let key = PeerKey::from_bits(word(0));
        let seq = word(1);
        let sent_at = self.base + Duration::from_nanos(word(2));
        table.on_reply(
            key,
            seq,
            sent_at,
            now,
            Reply {
                responder_id: pong.identity,
                responder_epoch: pong.epoch,
            },
        );
        let Some(entry) = self.current(key) else {
            return;
        };
        entry.last_pong_seq = entry.last_pong_seq.max(seq);
        let was = std::mem::replace(&mut entry.path, Path::Udp);
        if was == Path::Both {
            if let Some(spec) = table.spec(key) {
                grpc.close(&spec.host, spec.port);
            }
        }
    }

    /// A name lookup finished.
    pub(crate) fn resolved(&mut self, key: PeerKey, addr: Option<SocketAddr>) {
        if let Some(entry) = self.current(key) {
            entry.target = addr.map_or(Target::Unusable, Target::Addr);
        }
    }
}

/// `addr` as this socket can send to it: an IPv4 address through an IPv6
/// socket becomes v4-mapped; an IPv6 address cannot go through an IPv4 one.
fn family_fit(addr: SocketAddr, local_v6: bool) -> Option<SocketAddr> {
    match (addr.ip(), local_v6) {
        (IpAddr::V4(_), false) | (IpAddr::V6(_), true) => Some(addr),
        (IpAddr::V4(v4), true) => Some(SocketAddr::new(
            IpAddr::V6(v4.to_ipv6_mapped()),
            addr.port(),
        )),
        (IpAddr::V6(_), false) => None,
    }
}

fn resolve(key: PeerKey, host: String, port: u16, local_v6: bool) -> Resolving {
    Box::pin(async move {
        let lookup = tokio::time::timeout(
            RESOLVE_TIMEOUT,
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await;
        let addr = match lookup {
            Ok(Ok(addrs)) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                addrs
                    .iter()
                    .find(|a| a.is_ipv6() == local_v6)
                    .or(addrs.first())
                    .and_then(|a| family_fit(*a, local_v6))
            }
            Ok(Err(e)) => {
                tracing::debug!(%host, error = %e, "cannot resolve peer host for datagrams");
                None
            }
            Err(_) => None,
        };
        (key, addr)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expiry_keeps_its_fields_and_orders_by_deadline_never_early() {
        let base = Instant::now();
        let key = PeerKey::from_bits((7 << 32) | 3);
        let at = base + Duration::from_nanos(1_500_001);
        let e = Expiry::new(base, at, key, 42, true);
        assert_eq!((e.key(), e.seq(), e.counts()), (key, 42, true));
        assert!(e.at(base) >= at && e.at(base) - at < Duration::from_micros(1));
        let f = Expiry::new(base, at, key, u64::MAX >> 1, false);
        assert_eq!((f.seq(), f.counts()), (u64::MAX >> 1, false));
        let later = Expiry::new(base, at + Duration::from_micros(2), key, 1, false);
        assert!(e < later && f < later);
        assert_eq!(std::mem::size_of::<Expiry>(), 24);
    }

    #[test]
    fn addresses_are_fitted_to_the_sockets_family() {
        let v4: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(family_fit(v4, false), Some(v4));
        assert_eq!(family_fit(v6, true), Some(v6));
        assert_eq!(family_fit(v6, false), None);
        assert_eq!(
            family_fit(v4, true),
            Some("[::ffff:127.0.0.1]:80".parse().unwrap())
        );
    }
}
