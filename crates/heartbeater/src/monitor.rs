//! The driver of the peer table: one task that sleeps until the next
//! heartbeat is due, sends every due heartbeat, and feeds each outcome back.
//!
//! All peers share this one task and the table's single timer heap; a
//! heartbeat in flight is a future in one `FuturesUnordered`, not a task. The
//! table sits behind a `std::sync::Mutex` because every critical section is
//! a few hash lookups with no `.await` inside: an async mutex would only add
//! cost. Whoever changes the table (this task, a registration) drains the
//! table's events while still holding the lock, so events are published in
//! exactly the order they happened.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use heartbeater_core::{EventKind, PeerKey, PeerTable, Probe, Reply};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tonic::transport::{Channel, Endpoint};

use crate::event::PeerEvent;
use crate::lateness::{LatenessHistogram, LatenessSnapshot};
use crate::proto::heartbeat_service_client::HeartbeatServiceClient;
use crate::proto::HeartbeatMessage;
use crate::udp::{Datagram, Kind};
use crate::udp_path::{PathTable, Resolving};

/// Datagrams handled per wake-up before the driver looks at its other work.
const RECEIVE_BATCH: usize = 256;

/// Receive and send buffers of the datagram path, reused for every packet.
struct Datagrams {
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl Default for Datagrams {
    fn default() -> Self {
        Self {
            // Room for one byte more than the largest valid datagram, so an
            // oversized one is seen as such rather than silently cut.
            buf: vec![0; crate::udp::MAX_DATAGRAM + 1],
            out: Vec::with_capacity(crate::udp::MAX_DATAGRAM),
        }
    }
}

/// Events buffered per subscriber before the slowest starts skipping.
const EVENT_BUFFER: usize = 4096;

/// The table, the wake-up signal of its driver and the event fan-out.
pub(crate) struct Monitor {
    table: Mutex<PeerTable>,
    wake: Notify,
    events: broadcast::Sender<PeerEvent>,
    learned_epochs: mpsc::UnboundedSender<(Arc<str>, u64)>,
    lateness: LatenessHistogram,
    /// Heartbeats this node answered, over either path.
    pub(crate) answered: AtomicU64,
}

/// What became of one heartbeat.
struct Outcome {
    key: PeerKey,
    seq: u64,
    sent_at: Instant,
    reply: Option<(String, u64)>,
}

type InFlight = Pin<Box<dyn Future<Output = Outcome> + Send>>;

impl Monitor {
    /// A monitor, and the receiving end of the epochs it learns (which the
    /// node writes to its store off the driver task).
    pub(crate) fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<(Arc<str>, u64)>) {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (learned_epochs, epochs_rx) = mpsc::unbounded_channel();
        let monitor = Arc::new(Self {
            table: Mutex::new(PeerTable::new()),
            wake: Notify::new(),
            events,
            learned_epochs,
            lateness: LatenessHistogram::default(),
            answered: AtomicU64::new(0),
        });
        (monitor, epochs_rx)
    }

    fn lock(&self) -> MutexGuard<'_, PeerTable> {
        // Table operations do not panic on any input; should one ever, the
        // table is still consistent enough to keep monitoring the rest.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the table, publishes the events it caused, and wakes the
    /// driver so it sees any new deadline.
    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut PeerTable) -> R) -> R {
        let mut table = self.lock();
        let result = f(&mut table);
        self.publish(&mut table);
        drop(table);
        self.wake.notify_one();
        result
    }

    /// Reads the table.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&PeerTable) -> R) -> R {
        f(&self.lock())
    }

    pub(crate) fn lateness(&self) -> LatenessSnapshot {
        self.lateness.snapshot()
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.events.subscribe()
    }

    fn publish(&self, table: &mut PeerTable) {
        let timestamp = SystemTime::now();
        for e in table.drain_events() {
            if let (EventKind::PeerUp | EventKind::Restarted { .. }, Some(epoch)) =
                (&e.kind, e.epoch)
            {
                // The receiver lives as long as the node; a send error means
                // the node is stopping and the epoch no longer matters.
                let _ = self.learned_epochs.send((e.peer_id.clone(), epoch));
            }
            tracing::debug!(peer = %e.peer_id, kind = ?e.kind, state = %e.state, "peer event");
            // No subscriber is not an error: events are also in `peers()`.
            let _ = self.events.send(PeerEvent {
                peer_id: e.peer_id.to_string(),
                kind: e.kind,
                state: e.state,
                epoch: e.epoch,
                timestamp,
            });
        }
    }

    /// Drives the table until `shutdown` turns true. `udp`, when given, is
    /// the node's datagram socket: heartbeats to peers go over it first, and
    /// pings from other nodes arriving on it are answered here.
    pub(crate) async fn run(
        self: Arc<Self>,
        identity: String,
        epoch: u64,
        udp: Option<Arc<UdpSocket>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut grpc = GrpcChannels::new(identity.clone(), epoch);
        let mut paths = udp.map(|socket| PathTable::new(socket, identity, epoch));
        let mut inflight: FuturesUnordered<InFlight> = FuturesUnordered::new();
        let mut resolving: FuturesUnordered<Resolving> = FuturesUnordered::new();
        let mut due: Vec<Probe> = Vec::new();
        let mut datagrams = Datagrams::default();
        // One timer, re-armed only when the earliest deadline moves: a pong
        // must not cost a timer registration.
        let sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        loop {
            let next = {
                let table_next = self.lock().next_deadline();
                let udp_next = paths.as_ref().and_then(PathTable::next_timeout);
                match (table_next, udp_next) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            };
            if next != armed {
                let at = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                sleep.as_mut().reset(at.into());
                armed = next;
            }
            let readable = async {
                match &paths {
                    Some(p) => p.socket.readable().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Ok(()) = readable => {
                    if let Some(p) = paths.as_mut() {
                        self.receive(p, &mut grpc, &mut datagrams);
                    }
                }
                Some(outcome) = inflight.next(), if !inflight.is_empty() => {
                    self.apply(outcome);
                }
                Some((key, addr)) = resolving.next(), if !resolving.is_empty() => {
                    if let Some(p) = paths.as_mut() {
                        p.resolved(key, addr);
                    }
                }
                () = self.wake.notified() => {
                    let table = self.lock();
                    grpc.forget_unused(&table);
                }
                () = &mut sleep => {
                    armed = None;
                    let now = tokio::time::Instant::now().into_std();
                    let mut table = self.lock();
                    if let Some(p) = paths.as_mut() {
                        p.expire(now, &mut table);
                    }
                    table.poll_due(now, &mut due);
                    for probe in due.drain(..) {
                        self.lateness.record(probe.sent_at.saturating_duration_since(probe.due));
                        let Some(spec) = table.spec(probe.key) else { continue };
                        let timeout = spec.detector.timeout;
                        let via_grpc = match paths.as_mut() {
                            Some(p) => p.send(&probe, spec, now, &mut resolving),
                            None => true,
                        };
                        if via_grpc {
                            let client = grpc.client(&spec.host, spec.port, timeout);
                            inflight.push(grpc.probe(client, probe, timeout));
                        }
                    }
                    self.publish(&mut table);
                }
            }
        }
    }

    /// Reads every datagram waiting on the socket (up to a batch, so the
    /// other branches get their turn): pings are answered, pongs applied.
    fn receive(&self, paths: &mut PathTable, grpc: &mut GrpcChannels, d: &mut Datagrams) {
        let now = tokio::time::Instant::now().into_std();
        let mut table: Option<MutexGuard<'_, PeerTable>> = None;
        for _ in 0..RECEIVE_BATCH {
            let (n, from) = match paths.socket.try_recv_from(&mut d.buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP errors of earlier sends surface here on some
                    // systems; they say nothing about this socket.
                    tracing::trace!(error = %e, "udp receive");
                    continue;
                }
            };
            let Ok(datagram) = Datagram::decode(&d.buf[..n]) else {
                continue;
            };
            match datagram.kind {
                Kind::Ping => {
                    Datagram {
                        kind: Kind::Pong,
                        token: datagram.token,
                        epoch: paths.epoch,
                        identity: &paths.identity,
                    }
                    .encode(&mut d.out);
                    // Counted before the send, so whoever holds the pong
                    // already sees it counted. A full send buffer drops the
                    // answer (uncounted again); the pinger counts a miss and
                    // tries again, over gRPC too.
                    self.answered.fetch_add(1, Ordering::Relaxed);
                    if paths.socket.try_send_to(&d.out, from).is_err() {
                        self.answered.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                Kind::Pong => {
                    let table = table.get_or_insert_with(|| self.lock());
                    paths.on_pong(&datagram, now, table, grpc);
                }
            }
        }
        if let Some(mut table) = table {
            self.publish(&mut table);
        }
    }

    fn apply(&self, outcome: Outcome) {
        let now = tokio::time::Instant::now().into_std();
        let mut table = self.lock();
        match &outcome.reply {
            Some((id, epoch)) => table.on_reply(
                outcome.key,
                outcome.seq,
                outcome.sent_at,
                now,
                Reply {
                    responder_id: id,
                    responder_epoch: *epoch,
                },
            ),
            None => table.on_no_reply(outcome.key, outcome.seq, now),
        }
        self.publish(&mut table);
    }
}

/// Heartbeats over unary gRPC, one lazily connected channel per peer address.
pub(crate) struct GrpcChannels {
    identity: String,
    epoch: u64,
    clients: HashMap<(String, u16), HeartbeatServiceClient<Channel>>,
}

impl GrpcChannels {
    fn new(identity: String, epoch: u64) -> Self {
        Self {
            identity,
            epoch,
            clients: HashMap::new(),
        }
    }

    fn client(
        &mut self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Option<HeartbeatServiceClient<Channel>> {
        if let Some(c) = self.clients.get(&(host.to_owned(), port)) {
            return Some(c.clone());
        }
        let uri = if host.contains(':') {
            format!("http://[{host}]:{port}")
        } else {
            format!("http://{host}:{port}")
        };
        let endpoint = Endpoint::from_shared(uri)
            .ok()?
            .connect_timeout(timeout)
            .tcp_nodelay(true);
        let client = HeartbeatServiceClient::new(endpoint.connect_lazy());
        self.clients.insert((host.to_owned(), port), client.clone());
        Some(client)
    }

    /// Closes the channel to an address whose peers answer over UDP again.
    pub(crate) fn close(&mut self, host: &str, port: u16) {
        if !self.clients.is_empty() {
            self.clients.remove(&(host.to_owned(), port));
        }
    }

    /// Drops channels to addresses no peer uses any more.
    fn forget_unused(&mut self, table: &PeerTable) {
        if self.clients.len() <= table.len() {
            return;
        }
        let in_use: std::collections::HashSet<(String, u16)> = table
            .statuses()
            .into_iter()
            .map(|s| (s.host, s.port))
            .collect();
        self.clients.retain(|addr, _| in_use.contains(addr));
    }

    fn probe(
        &self,
        client: Option<HeartbeatServiceClient<Channel>>,
        probe: Probe,
        timeout: Duration,
    ) -> InFlight {
        let message = HeartbeatMessage {
            client_id: self.identity.clone(),
            client_epoch: self.epoch,
        };
        Box::pin(async move {
            let reply = match client {
                Some(mut client) => {
                    let mut request = tonic::Request::new(message);
                    request.set_timeout(timeout);
                    match tokio::time::timeout(timeout, client.heartbeat(request)).await {
                        Ok(Ok(resp)) => {
                            let r = resp.into_inner();
                            Some((r.server_id, r.server_epoch))
                        }
                        Ok(Err(status)) => {
                            tracing::trace!(%status, "heartbeat failed");
                            None
                        }
                        Err(_elapsed) => None,
                    }
                }
                None => None,
            };
            Outcome {
                key: probe.key,
                seq: probe.seq,
                sent_at: probe.sent_at,
                reply,
            }
        })
    }
}
