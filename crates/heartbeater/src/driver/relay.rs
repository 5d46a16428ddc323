//! The helper's side of indirect probes: heartbeating a suspect for a
//! monitor that asked, and telling it what came back.
//!
//! A request is taken only from a member of the cluster (it must be signed
//! with the cluster key, checked before it gets here) and only within a
//! rate per monitor address; each costs one ping to the suspect and at most
//! one answer, never longer than the request. The requests open at once
//! have a fixed room, each held no longer than its timeout. The ping's
//! token is sealed under a secret of this helper's own, so the suspect's
//! pong names the request it answers and nobody else can make one.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use heartbeater_core::datagram::Datagram;
use heartbeater_core::indirect::{ProbeAnswer, ProbeRequest};
use heartbeater_core::{Keyring, ProbeId, ProbeSealer};
use tokio::net::UdpSocket;

use crate::node::counters::Counters;

/// Requests open at once, from all monitors together.
pub(crate) const RELAY_ROOM: usize = 1024;
/// Requests a monitor address may make per second, sustained: far above
/// what a monitor with a few suspects at a time asks (one per suspect and
/// helper per round), far below what would make a helper a flood engine.
pub(crate) const RATE_PER_MONITOR: u32 = 200;
/// Requests a monitor may make at once, before its rate applies.
pub(crate) const BURST_PER_MONITOR: u32 = 400;
/// Monitor addresses with a rate kept at once.
const MONITORS: usize = 4096;
/// Requests of one monitor address open at once: a quarter of the room, so
/// that one monitor (its requests held up to a minute each) cannot keep the
/// others out.
pub(crate) const OPEN_PER_MONITOR: usize = RELAY_ROOM / 4;

/// One request being served.
#[derive(Debug, Clone, Copy)]
struct Open {
    monitor: SocketAddr,
    nonce: [u8; 32],
    target: SocketAddr,
    until: Instant,
    request_len: usize,
    generation: u32,
}

/// A monitor's allowance, refilled with time.
#[derive(Debug, Clone, Copy)]
struct Allowance {
    tokens: u32,
    at: Instant,
}

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Served {
    /// The suspect was pinged.
    Probed,
    /// Over the monitor's rate, or no room: dropped.
    Refused,
}

/// Heartbeats suspects for the monitors that ask.
pub(crate) struct Relay {
    sealer: ProbeSealer,
    open: Vec<Option<Open>>,
    generation: u32,
    allowances: HashMap<IpAddr, Allowance>,
    buf: Vec<u8>,
}

impl Relay {
    pub(crate) fn new(secret: [u8; 32]) -> Self {
        Self {
            sealer: ProbeSealer::new(secret),
            open: Vec::new(),
            generation: 0,
            allowances: HashMap::new(),
            buf: Vec::with_capacity(heartbeater_core::datagram::MAX_DATAGRAM),
        }
    }

    fn allowed(&mut self, monitor: IpAddr, now: Instant) -> bool {
        if !self.allowances.contains_key(&monitor) && self.allowances.len() >= MONITORS {
            // Forget the monitors whose allowance is full again: they
            // asked nothing for a while.
            let full = Duration::from_secs(u64::from(BURST_PER_MONITOR / RATE_PER_MONITOR) + 1);
            self.allowances
                .retain(|_, a| now.saturating_duration_since(a.at) < full);
            if self.allowances.len() >= MONITORS {
                return false;
            }
        }
        let a = self.allowances.entry(monitor).or_insert(Allowance {
            tokens: BURST_PER_MONITOR,
            at: now,
        });
        let elapsed = now.saturating_duration_since(a.at);
        let earned = elapsed
            .as_millis()
            .saturating_mul(u128::from(RATE_PER_MONITOR))
            / 1000;
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            a.tokens = a.tokens.saturating_add(earned).min(BURST_PER_MONITOR);
            a.at = now;
        }
        if a.tokens == 0 {
            return false;
        }
        a.tokens -= 1;
        true
    }

    /// Requests of `monitor` still open at `now`.
    fn open_for(&self, monitor: IpAddr, now: Instant) -> usize {
        self.open
            .iter()
            .flatten()
            .filter(|o| o.monitor.ip() == monitor && o.until >= now)
            .count()
    }

    /// A free place for a request at `now`: an empty one, or one whose
    /// request timed out.
    fn place(&mut self, now: Instant) -> Option<usize> {
        if let Some(i) = self
            .open
            .iter()
            .position(|o| o.is_none_or(|o| o.until < now))
        {
            return Some(i);
        }
        if self.open.len() < RELAY_ROOM {
            self.open.push(None);
            return Some(self.open.len() - 1);
        }
        None
    }

    /// Serves `request`, which came from `from` in `request_len` bytes,
    /// signed with the cluster key: pings its target as this node.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_request(
        &mut self,
        request: &ProbeRequest<'_>,
        from: SocketAddr,
        request_len: usize,
        now: Instant,
        me: (&str, u64),
        keyring: &Keyring,
        socket: &UdpSocket,
    ) -> Served {
        if !self.allowed(from.ip(), now) || self.open_for(from.ip(), now) >= OPEN_PER_MONITOR {
            return Served::Refused;
        }
        let Some(i) = self.place(now) else {
            return Served::Refused;
        };
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let slot = u64::try_from(i).unwrap_or(u64::MAX);
        let token = self
            .sealer
            .seal(ProbeId::from_bytes(id_bytes(slot, generation)));
        Datagram {
            kind: heartbeater_core::datagram::Kind::Ping,
            token,
            epoch: me.1,
            identity: me.0,
        }
        .seal(
            Datagram::pong_len(request.expected.len(), true),
            Some(keyring),
            &mut self.buf,
        );
        // The target as this socket can reach it: a v4 target through a
        // dual-stack socket goes v4-mapped.
        let target = fit(request.target, socket);
        if socket.try_send_to(&self.buf, target).is_err() {
            return Served::Refused;
        }
        if let Some(place) = self.open.get_mut(i) {
            *place = Some(Open {
                monitor: from,
                nonce: request.nonce,
                target,
                until: now + request.timeout,
                request_len,
                generation,
            });
        }
        Served::Probed
    }

    /// A pong whose token this node's heartbeat sealer did not make: if it
    /// answers a ping sent for a monitor, in time and from the address
    /// pinged, tells the monitor what it said. Returns whether it was one.
    pub(crate) fn on_pong(
        &mut self,
        pong: &Datagram<'_>,
        from: SocketAddr,
        now: Instant,
        keyring: Option<&Keyring>,
        socket: &UdpSocket,
        counters: &Counters,
    ) -> bool {
        let (Some(id), Some(keyring)) = (self.sealer.open(&pong.token), keyring) else {
            return false;
        };
        let (slot, generation) = split(id);
        let Some(place) = usize::try_from(slot)
            .ok()
            .and_then(|i| self.open.get_mut(i))
        else {
            return true;
        };
        let Some(open) = place.filter(|o| o.generation == generation) else {
            return true;
        };
        if open.until < now || from != open.target {
            return true;
        }
        // One answer per request.
        *place = None;
        let answer = ProbeAnswer {
            nonce: open.nonce,
            epoch: pong.epoch,
            identity: pong.identity,
        };
        if answer.seal(open.request_len, keyring, &mut self.buf)
            && socket.try_send_to(&self.buf, open.monitor).is_ok()
        {
            Counters::add(&counters.relay_answered);
        }
        true
    }
}

fn id_bytes(slot: u64, generation: u32) -> [u8; ProbeId::LEN] {
    let mut bytes = [0u8; ProbeId::LEN];
    bytes[..8].copy_from_slice(&slot.to_be_bytes());
    bytes[8..12].copy_from_slice(&generation.to_be_bytes());
    bytes
}

fn split(id: ProbeId) -> (u64, u32) {
    let b = id.to_bytes();
    let mut slot = [0u8; 8];
    slot.copy_from_slice(&b[..8]);
    let mut generation = [0u8; 4];
    generation.copy_from_slice(&b[8..12]);
    (u64::from_be_bytes(slot), u32::from_be_bytes(generation))
}

/// `addr` as `socket` sends to it.
fn fit(addr: SocketAddr, socket: &UdpSocket) -> SocketAddr {
    match (addr, socket.local_addr()) {
        (SocketAddr::V4(v4), Ok(SocketAddr::V6(_))) => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_monitor_gets_its_burst_then_its_rate() {
        let mut relay = Relay::new([1; 32]);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let granted = (0..1000).filter(|_| relay.allowed(ip, t0)).count();
        assert_eq!(granted, BURST_PER_MONITOR as usize);
        // A second later, one second's rate more.
        let later = t0 + Duration::from_secs(1);
        let granted = (0..1000).filter(|_| relay.allowed(ip, later)).count();
        assert_eq!(granted, RATE_PER_MONITOR as usize);
        // Another monitor is not held back by the first.
        assert!(relay.allowed("10.0.0.2".parse().unwrap(), later));
    }

    #[test]
    fn the_room_is_bounded_and_a_timed_out_request_makes_room() {
        let mut relay = Relay::new([1; 32]);
        let t0 = Instant::now();
        for _ in 0..RELAY_ROOM {
            let i = relay.place(t0).unwrap();
            relay.open[i] = Some(Open {
                monitor: "10.0.0.1:1".parse().unwrap(),
                nonce: [0; 32],
                target: "10.0.0.2:1".parse().unwrap(),
                until: t0 + Duration::from_millis(100),
                request_len: 100,
                generation: 1,
            });
        }
        assert_eq!(relay.place(t0), None);
        assert!(relay.place(t0 + Duration::from_millis(101)).is_some());
        assert_eq!(relay.open.len(), RELAY_ROOM);
    }

    #[tokio::test]
    async fn one_monitor_holds_at_most_its_share_of_the_room() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // As in the driver, whose socket the runtime has seen writable.
        socket.writable().await.unwrap();
        let sink = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let target = sink.local_addr().unwrap();
        // The suspect reads its pings (a full buffer would refuse sends).
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while sink.recv_from(&mut buf).await.is_ok() {}
        });
        let keyring = Keyring::new(&[[3u8; 16]]).unwrap();
        let mut relay = Relay::new([1; 32]);
        let request = ProbeRequest {
            nonce: [0; 32],
            timeout: Duration::from_secs(60),
            target,
            expected: "suspect",
        };
        let t0 = Instant::now();
        let serve = |relay: &mut Relay, from: &str, at: Instant| {
            relay.on_request(
                &request,
                from.parse().unwrap(),
                100,
                at,
                ("helper", 1),
                &keyring,
                &socket,
            )
        };
        // Spread over time, so that the rate is not what refuses.
        let mut at = t0;
        for _ in 0..OPEN_PER_MONITOR {
            at += Duration::from_millis(10);
            assert_eq!(serve(&mut relay, "10.0.0.1:7", at), Served::Probed);
            // The suspect's turn to read.
            tokio::task::yield_now().await;
        }
        at += Duration::from_millis(10);
        assert_eq!(serve(&mut relay, "10.0.0.1:7", at), Served::Refused);
        assert_eq!(serve(&mut relay, "10.0.0.2:7", at), Served::Probed);
        // Once its requests time out, the first monitor is served again.
        let later = at + Duration::from_secs(61);
        assert_eq!(serve(&mut relay, "10.0.0.1:7", later), Served::Probed);
    }

    #[test]
    fn tokens_name_their_place_and_generation() {
        let id = ProbeId::from_bytes(id_bytes(1023, 77));
        assert_eq!(split(id), (1023, 77));
    }
}
