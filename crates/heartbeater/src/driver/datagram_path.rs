//! Which path each peer's heartbeats take: the datagram first, gRPC where
//! datagrams go unanswered.
//!
//! Per peer, one of three states:
//!
//! - **Probing**: the peer has not answered a datagram yet. Heartbeats go
//!   as datagrams only, as trials: one that goes unanswered is not held
//!   against the peer (it may just not speak UDP, or UDP may be filtered),
//!   and the peer moves to *Both*.
//! - **Udp**: the last datagram was answered. Heartbeats go as datagrams
//!   only; a timeout is a miss, and moves the peer to *Both*.
//! - **Both**: datagrams go unanswered. Each heartbeat goes both ways
//!   (whichever valid answer comes first wins), and the first valid pong
//!   moves the peer back to *Udp* and closes its gRPC channel. On a node
//!   with a cluster key, the gRPC path is not used: it is not authenticated
//!   by the key, so *Both* is datagrams that count.
//!
//! A pong is believed only through its token: the probe id the table
//! issued, sealed with a MAC under a secret of this run
//! ([`heartbeater_core::ProbeSealer`]). Nothing else in a pong (no send
//! time, no sequence number) is read back; the table knows when and on which
//! path it sent each heartbeat.
//!
//! So a peer that answers datagrams costs its monitor a few dozen bytes and
//! two syscalls per heartbeat, a peer behind a UDP filter costs what the
//! gRPC path costs, and one lost datagram never makes a peer unreachable
//! by itself: the next heartbeat is also carried by gRPC.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use heartbeater_core::datagram::{Datagram, Kind};
use heartbeater_core::{
    Expired, Keyring, Pages, Path as Route, PeerKey, PeerSpec, Probe, ProbeId, ProbeSealer,
};
use tokio::net::UdpSocket;

/// A name being resolved for the datagram path.
pub(crate) type Resolving = Pin<Box<dyn Future<Output = (PeerKey, Lookup)> + Send>>;

/// What a name lookup for the datagram path gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// An address this socket can send to.
    Found(SocketAddr),
    /// No usable address: the name does not resolve, has no address of
    /// this socket's family, or the resolver did not answer in time.
    Failed,
    /// The node's own resolver had no room for the lookup: this node's
    /// trouble, not the peer's, so the next heartbeat asks again.
    Busy,
}

/// How long after a failed lookup a peer's name is looked up again; the
/// heartbeats meanwhile go by gRPC where that is allowed.
const LOOKUP_RETRY: Duration = Duration::from_secs(2);

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
    /// A name whose lookup failed: gRPC only until it is looked up again
    /// at `retry_at`.
    LookupFailed {
        retry_at: std::time::Instant,
    },
}

#[derive(Debug)]
struct PeerPath {
    key: PeerKey,
    path: Path,
    target: Target,
    /// Whether the registered host is a DNS name, looked up again after a
    /// silence (it may point elsewhere now).
    named: bool,
    /// Highest heartbeat answered by a pong with a token of ours.
    last_pong_seq: u64,
}

/// How one heartbeat is to travel, as [`DatagramPath::send`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sent {
    /// It left as a datagram; `Some(trial)` says whether its silence counts.
    pub(crate) datagram: Option<bool>,
    /// It must (also) go over gRPC.
    pub(crate) grpc: bool,
    /// Its peer's name is still being looked up: if gRPC cannot carry it,
    /// it went nowhere for this node's own reasons.
    pub(crate) resolving: bool,
}

/// Whether a send failed for this node's own reasons (its socket's buffer
/// is full), not the network's.
fn local_backlog(e: &std::io::Error) -> bool {
    // ENOBUFS: the kernel's queue for the interface is full.
    e.kind() == std::io::ErrorKind::WouldBlock || e.raw_os_error() == Some(105)
}

/// Sends `datagrams[i]` (its bytes in `bufs[i]`) to its address, as many as
/// one system call takes; returns how many it took. One datagram goes by
/// `sendto`: a node keeping up sends one or two per wake-up, and setting up
/// a batch would cost more than the call it saves.
#[cfg(target_os = "linux")]
fn send_many(
    socket: &UdpSocket,
    datagrams: &[(ProbeId, SocketAddr)],
    bufs: &[Vec<u8>],
) -> std::io::Result<usize> {
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};

    let n = datagrams.len().min(bufs.len()).min(SEND_BATCH);
    if n <= 1 {
        return match (datagrams.first(), bufs.first()) {
            (Some(&(_, addr)), Some(buf)) => socket.try_send_to(buf, addr).map(|_| 1),
            _ => Ok(0),
        };
    }
    let slices: Vec<[IoSlice<'_>; 1]> = bufs.iter().take(n).map(|b| [IoSlice::new(b)]).collect();
    let addrs: Vec<Option<SockaddrStorage>> = datagrams
        .iter()
        .take(n)
        .map(|&(_, a)| Some(SockaddrStorage::from(a)))
        .collect();
    let fd = socket.as_raw_fd();
    socket.try_io(tokio::io::Interest::WRITABLE, || {
        SEND_HEADERS.with_borrow_mut(|headers| {
            let headers =
                headers.get_or_insert_with(|| MultiHeaders::preallocate(SEND_BATCH, None));
            let no_cmsgs: [ControlMessage<'_>; 0] = [];
            sendmmsg(
                fd,
                headers,
                &slices,
                &addrs,
                no_cmsgs,
                MsgFlags::MSG_DONTWAIT,
            )
            .map(|results| results.count())
            .map_err(std::io::Error::from)
        })
    })
}

#[cfg(target_os = "linux")]
std::thread_local! {
    /// The `sendmmsg` headers, made once per thread: they hold raw pointers,
    /// so a driver task may not keep them across an await (it would not be
    /// `Send`), and making them for each flush costs more than the send.
    static SEND_HEADERS: std::cell::RefCell<
        Option<nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>>,
    > = const { std::cell::RefCell::new(None) };
}

/// Sends the first of `datagrams` (its bytes in `bufs[0]`).
#[cfg(not(target_os = "linux"))]
fn send_many(
    socket: &UdpSocket,
    datagrams: &[(ProbeId, SocketAddr)],
    bufs: &[Vec<u8>],
) -> std::io::Result<usize> {
    match (datagrams.first(), bufs.first()) {
        (Some(&(_, addr)), Some(buf)) => socket.try_send_to(buf, addr).map(|_| 1),
        _ => Ok(0),
    }
}

impl Sent {
    /// Not sent at all, because this node's own send buffer is full: the
    /// heartbeat is voided, not carried elsewhere.
    pub(crate) const BACKLOG: Sent = Sent {
        datagram: None,
        grpc: false,
        resolving: false,
    };

    /// Not as a datagram: the peer's name is being looked up. gRPC carries
    /// it where it may; elsewhere it is voided, not a miss.
    pub(crate) const RESOLVING: Sent = Sent {
        datagram: None,
        grpc: true,
        resolving: true,
    };

    /// Not as a datagram (no address yet, none usable, or the send failed):
    /// gRPC carries it.
    pub(crate) const GRPC_ONLY: Sent = Sent {
        datagram: None,
        grpc: true,
        resolving: false,
    };
}

/// What a pong turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PongOutcome {
    /// Its token was not made by this node: forged, corrupted or from an
    /// earlier run.
    Forged,
    /// A token of ours naming heartbeat `.1`, judged by the table.
    Judged(heartbeater_core::ReplyVerdict, ProbeId),
}

/// The datagram side of the node's driver: the socket, each peer's path,
/// the key that seals probe tokens and the optional cluster keyring.
pub(crate) struct DatagramPath {
    pub(crate) socket: Arc<UdpSocket>,
    local_v6: bool,
    sealer: ProbeSealer,
    keyring: Option<Keyring>,
    identity: String,
    epoch: u64,
    peers: Pages<PeerPath>,
    /// Heartbeats sealed and not yet handed to the kernel, each with where
    /// it goes: [`DatagramPath::flush`] sends them many per system call.
    queued: Vec<(ProbeId, SocketAddr)>,
    /// `queued[i]`'s bytes in `bufs[i]`; the buffers are kept for reuse.
    bufs: Vec<Vec<u8>>,
}

/// Heartbeats queued before [`DatagramPath::flush`] must run: what one
/// `sendmmsg` takes.
pub(crate) const SEND_BATCH: usize = 64;

/// A queued heartbeat the kernel did not take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unsent {
    /// This node's own send buffer was full: void it.
    Backlog(ProbeId),
    /// Refused for the peer's reasons (no route, say): gRPC may carry it.
    Refused(ProbeId),
}

impl DatagramPath {
    pub(crate) fn new(
        socket: Arc<UdpSocket>,
        identity: String,
        epoch: u64,
        sealer: ProbeSealer,
        keyring: Option<Keyring>,
    ) -> Self {
        let local_v6 = socket.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
        Self {
            socket,
            local_v6,
            sealer,
            keyring,
            identity,
            epoch,
            peers: Pages::new(),
            queued: Vec::with_capacity(SEND_BATCH),
            bufs: Vec::new(),
        }
    }

    /// The identity this node heartbeats as.
    pub(crate) fn identity(&self) -> &str {
        &self.identity
    }

    /// The epoch this node heartbeats with.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    pub(crate) fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_ref()
    }

    /// Replaces the cluster keyring (a rotation step, or turning
    /// authentication on or off).
    pub(crate) fn set_keyring(&mut self, keyring: Option<Keyring>) {
        self.keyring = keyring;
    }

    fn entry(&mut self, key: PeerKey, spec: &PeerSpec) -> &mut PeerPath {
        let fresh = || {
            let (target, named) = match spec.host.parse::<IpAddr>() {
                Ok(ip) => (
                    family_fit(SocketAddr::new(ip, spec.port), self.local_v6)
                        .map_or(Target::Unusable, Target::Addr),
                    false,
                ),
                Err(_) => (Target::Unresolved, true),
            };
            PeerPath {
                key,
                path: Path::Probing,
                target,
                named,
                last_pong_seq: 0,
            }
        };
        let slot = self.peers.place(key.index());
        if !matches!(slot, Some(p) if p.key == key) {
            *slot = Some(fresh());
        }
        slot.get_or_insert_with(fresh)
    }

    /// The peer whose datagrams go to `addr`, if any. A scan of every
    /// peer: it names the sender in a log line written at most every few
    /// seconds, which is cheaper than an index costing every peer ~50 bytes.
    pub(crate) fn peer_at(&self, addr: SocketAddr) -> Option<PeerKey> {
        self.peers
            .iter()
            .find(|p| p.target == Target::Addr(addr))
            .map(|p| p.key)
    }

    /// Where the datagrams of the peer under `key` go, once known: the
    /// address an indirect probe names.
    pub(crate) fn address(&self, key: PeerKey) -> Option<SocketAddr> {
        match self.peers.get(key.index()).filter(|p| p.key == key)?.target {
            Target::Addr(addr) => Some(addr),
            _ => None,
        }
    }

    /// [`Self::address`], for a peer whose last datagram was answered: one
    /// that can be asked to probe others over datagrams.
    pub(crate) fn answering_address(&self, key: PeerKey) -> Option<SocketAddr> {
        let p = self.peers.get(key.index()).filter(|p| p.key == key)?;
        match (p.path, p.target) {
            (Path::Udp, Target::Addr(addr)) => Some(addr),
            _ => None,
        }
    }

    /// `id` sealed into a token under this run's secret.
    pub(crate) fn seal(&self, id: ProbeId) -> [u8; 32] {
        self.sealer.seal(id)
    }

    /// The probe a token of this run names, if it is one.
    pub(crate) fn open(&self, token: &[u8; 32]) -> Option<ProbeId> {
        self.sealer.open(token)
    }

    fn current(&mut self, key: PeerKey) -> Option<&mut PeerPath> {
        self.peers.get_mut(key.index()).filter(|p| p.key == key)
    }

    /// Sends `probe` as a datagram where that is possible, and says how it
    /// went and whether gRPC must carry it (too). `grpc_allowed` is false on
    /// a node with a cluster key.
    pub(crate) fn send(
        &mut self,
        probe: &Probe,
        spec: &PeerSpec,
        grpc_allowed: bool,
        resolving: &mut futures_util::stream::FuturesUnordered<Resolving>,
    ) -> Sent {
        let local_v6 = self.local_v6;
        let key = probe.id.peer();
        let entry = self.entry(key, spec);
        let addr = match entry.target {
            Target::Addr(addr) => addr,
            Target::Unresolved => {
                entry.target = Target::Resolving;
                resolving.push(resolve(key, spec.host.clone(), spec.port, local_v6));
                return Sent::RESOLVING;
            }
            Target::Resolving => return Sent::RESOLVING,
            Target::LookupFailed { retry_at } if crate::driver::clock::now() >= retry_at => {
                entry.target = Target::Resolving;
                resolving.push(resolve(key, spec.host.clone(), spec.port, local_v6));
                return Sent::RESOLVING;
            }
            Target::Unusable | Target::LookupFailed { .. } => return Sent::GRPC_ONLY,
        };
        let path = entry.path;
        let authenticated = self.keyring.is_some();
        let i = self.queued.len();
        if self.bufs.len() <= i {
            self.bufs
                .push(Vec::with_capacity(heartbeater_core::datagram::MAX_DATAGRAM));
        }
        let Some(out) = self.bufs.get_mut(i) else {
            return Sent::GRPC_ONLY;
        };
        Datagram {
            kind: Kind::Ping,
            token: self.sealer.seal(probe.id),
            epoch: self.epoch,
            identity: &self.identity,
        }
        .seal(
            Datagram::pong_len(spec.peer_id.len(), authenticated),
            self.keyring.as_ref(),
            out,
        );
        // Sent by the next flush, within this wake-up; taken as sent until
        // the kernel says otherwise (see `Unsent`).
        self.queued.push((probe.id, addr));
        match path {
            Path::Probing => Sent {
                datagram: Some(true),
                grpc: false,
                resolving: false,
            },
            Path::Udp => Sent {
                datagram: Some(false),
                grpc: false,
                resolving: false,
            },
            Path::Both => Sent {
                datagram: Some(false),
                grpc: grpc_allowed,
                resolving: false,
            },
        }
    }

    /// How many heartbeats wait for [`DatagramPath::flush`].
    pub(crate) fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Hands every queued heartbeat to the kernel, as few system calls as
    /// it takes, and appends those it did not take to `unsent`. Returns how
    /// many left.
    pub(crate) fn flush(&mut self, unsent: &mut Vec<Unsent>) -> usize {
        let mut start = 0;
        let mut sent = 0;
        while let Some(rest) = self.queued.get(start..).filter(|r| !r.is_empty()) {
            let bufs = self.bufs.get(start..).unwrap_or_default();
            let error = match send_many(&self.socket, rest, bufs) {
                Ok(n) if n > 0 => {
                    start += n;
                    sent += n;
                    continue;
                }
                // Nothing taken, and no reason given: as a full buffer.
                Ok(_) => std::io::Error::from(std::io::ErrorKind::WouldBlock),
                Err(e) => e,
            };
            if let Some(&(_, addr)) = rest.first() {
                tracing::trace!(error = %error, %addr, "heartbeat datagram not sent");
            }
            // A full send buffer is this node's own backlog: the heartbeats
            // left are voided, and no peer is moved to the dearer path,
            // which would only deepen it. No route, a refused send: gRPC
            // carries that one, and the others go on.
            if local_backlog(&error) {
                unsent.extend(rest.iter().map(|&(id, _)| Unsent::Backlog(id)));
                break;
            }
            if let Some(&(id, _)) = rest.first() {
                unsent.push(Unsent::Refused(id));
            }
            start += 1;
        }
        self.queued.clear();
        sent
    }

    /// A heartbeat timed out: a datagram that went unanswered moves its peer
    /// to *Both*, and a peer registered by name to a new lookup.
    pub(crate) fn on_expired(&mut self, expired: &Expired) {
        if !expired.paths.contains(Route::Datagram) {
            return;
        }
        let seq = expired.id.seq();
        if let Some(entry) = self.current(expired.id.peer()) {
            if entry.last_pong_seq < seq && entry.path != Path::Both {
                entry.path = Path::Both;
                if entry.named && entry.target != Target::Resolving {
                    entry.target = Target::Unresolved;
                }
            }
        }
    }

    /// Applies a pong that arrived at `now`: its token must open with this
    /// node's sealer, and the table judges the rest. Returns the outcome and,
    /// when a peer just came back to datagrams, which (it left *Both*, so its
    /// gRPC channel can close).
    pub(crate) fn on_pong(
        &mut self,
        pong: &Datagram<'_>,
        arrival: heartbeater_core::Arrival,
        table: &mut heartbeater_core::PeerTable,
    ) -> (PongOutcome, Option<PeerKey>) {
        let Some(id) = self.sealer.open(&pong.token) else {
            return (PongOutcome::Forged, None);
        };
        let verdict = table.on_reply_in(
            id,
            Route::Datagram,
            arrival,
            heartbeater_core::Reply {
                responder_id: pong.identity,
                responder_epoch: pong.epoch,
            },
        );
        let mut left_both = None;
        // Any pong with a token of ours, even late (its heartbeat already
        // settled) or from another identity, proves that datagrams get
        // through: the path follows whether they pass, the verdict is the
        // table's alone. A late pong must not keep an overloaded peer on the
        // dearer gRPC path, where it would only get later. (A replayed pong
        // can at most move a peer back to datagrams, until its next silence.)
        if let Some(entry) = self.current(id.peer()) {
            entry.last_pong_seq = entry.last_pong_seq.max(id.seq());
            if std::mem::replace(&mut entry.path, Path::Udp) == Path::Both {
                left_both = Some(id.peer());
            }
        }
        (PongOutcome::Judged(verdict, id), left_both)
    }

    /// A name lookup finished.
    pub(crate) fn resolved(&mut self, key: PeerKey, lookup: Lookup) {
        let Some(entry) = self.current(key) else {
            return;
        };
        entry.target = match lookup {
            Lookup::Found(addr) => Target::Addr(addr),
            Lookup::Failed => Target::LookupFailed {
                retry_at: crate::driver::clock::now() + LOOKUP_RETRY,
            },
            Lookup::Busy => Target::Unresolved,
        };
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
        let lookup = crate::resolver::Resolver::system()
            .lookup(&host, port, RESOLVE_TIMEOUT)
            .await;
        let found = match lookup {
            Ok(addrs) => addrs
                .iter()
                .find(|a| a.is_ipv6() == local_v6)
                .or(addrs.first())
                .and_then(|a| family_fit(*a, local_v6))
                .map_or(Lookup::Failed, Lookup::Found),
            Err(crate::resolver::LookupError::Busy) => Lookup::Busy,
            Err(e) => {
                tracing::debug!(%host, error = %e, "cannot resolve peer host for datagrams");
                Lookup::Failed
            }
        };
        (key, found)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed lookup is no verdict on the name for ever: the peer's
    /// heartbeats go by gRPC meanwhile, and the name is looked up again.
    #[tokio::test(start_paused = true)]
    async fn a_name_whose_lookup_failed_is_looked_up_again() {
        use heartbeater_core::{DetectorConfig, PeerTable};
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let mut path = DatagramPath::new(socket, "me".into(), 1, ProbeSealer::new([7; 32]), None);
        let mut table = PeerTable::new();
        let detector = DetectorConfig::new(Duration::from_millis(100), None, None).unwrap();
        let spec = PeerSpec::new("p", "peer.internal", 8181, detector).unwrap();
        table.upsert(spec.clone(), crate::driver::clock::now());
        let mut resolving = futures_util::stream::FuturesUnordered::new();
        let mut due = Vec::new();
        table.poll_due(crate::driver::clock::now(), &mut due);
        let probe = due.first().expect("a heartbeat due").clone();
        let key = probe.id.peer();
        let mut send = |path: &mut DatagramPath| path.send(&probe, &spec, true, &mut resolving);
        assert_eq!(
            send(&mut path),
            Sent::RESOLVING,
            "the first heartbeat looks the name up"
        );
        path.resolved(key, Lookup::Failed);
        assert_eq!(send(&mut path), Sent::GRPC_ONLY, "gRPC meanwhile");
        tokio::time::advance(LOOKUP_RETRY).await;
        assert_eq!(send(&mut path), Sent::RESOLVING, "looked up again");
        // The node's own resolver being full is no failure of the name.
        path.resolved(key, Lookup::Busy);
        assert_eq!(send(&mut path), Sent::RESOLVING, "asked again at once");
    }

    /// Heartbeats queued in one wake-up leave together, each to its own
    /// peer with its own token; one the kernel refuses is reported, and the
    /// others still go.
    #[tokio::test]
    async fn queued_heartbeats_leave_together_and_a_refused_one_is_reported() {
        use heartbeater_core::{DetectorConfig, PeerTable};
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let sealer = ProbeSealer::new([7; 32]);
        let mut path = DatagramPath::new(socket, "me".into(), 1, sealer.clone(), None);
        let peers: Vec<std::net::UdpSocket> = (0..SEND_BATCH + 3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let detector = DetectorConfig::new(Duration::from_millis(100), None, None).unwrap();
        let mut specs: Vec<PeerSpec> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let port = u32::from(p.local_addr().unwrap().port());
                PeerSpec::new(&format!("p{i}"), "127.0.0.1", port, detector).unwrap()
            })
            .collect();
        // Broadcast, on a socket not allowed to: the kernel refuses it. In
        // the middle of the batch, with others after it.
        let nowhere = PeerSpec::new("nowhere", "255.255.255.255", 9, detector).unwrap();
        specs.insert(10, nowhere);
        let mut table = PeerTable::new();
        let now = std::time::Instant::now();
        for spec in &specs {
            table.upsert(spec.clone(), now);
        }
        let mut due = Vec::new();
        table.poll_due(now, &mut due);
        let mut resolving = futures_util::stream::FuturesUnordered::new();
        for probe in &due {
            let spec = table.spec(probe.id.peer()).unwrap().clone();
            assert_eq!(
                path.send(probe, &spec, true, &mut resolving).datagram,
                Some(true)
            );
        }
        assert_eq!(path.queued(), specs.len(), "nothing left yet");
        // As a driver's socket is: known to the runtime as writable.
        path.socket.writable().await.unwrap();
        let mut unsent = Vec::new();
        assert_eq!(path.flush(&mut unsent), peers.len());
        assert_eq!(path.queued(), 0);
        let refused: Vec<_> = due
            .iter()
            .filter(|p| table.spec(p.id.peer()).unwrap().host == "255.255.255.255")
            .map(|p| Unsent::Refused(p.id))
            .collect();
        assert_eq!(unsent, refused);
        for (i, peer) in peers.iter().enumerate() {
            let mut buf = [0u8; 512];
            peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let n = peer.recv(&mut buf).unwrap();
            let ping = Datagram::open(&buf[..n], None).unwrap();
            let id = sealer.open(&ping.token).expect("a token of ours");
            let spec = table.spec(id.peer()).unwrap();
            assert_eq!(&*spec.peer_id, format!("p{i}"), "each to its own peer");
        }
        // The next period's heartbeats leave the same way, through the same
        // (reused) headers.
        let mut due = Vec::new();
        table.poll_due(now + Duration::from_millis(100), &mut due);
        for probe in &due {
            let spec = table.spec(probe.id.peer()).unwrap().clone();
            path.send(probe, &spec, true, &mut resolving);
        }
        unsent.clear();
        assert_eq!(path.flush(&mut unsent), peers.len());
        for peer in &peers {
            let mut buf = [0u8; 512];
            let n = peer.recv(&mut buf).unwrap();
            let ping = Datagram::open(&buf[..n], None).unwrap();
            assert_eq!(sealer.open(&ping.token).unwrap().seq(), 2);
        }
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
