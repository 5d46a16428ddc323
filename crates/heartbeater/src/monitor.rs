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
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use heartbeater_core::{EventKind, PeerKey, PeerTable, Probe, Reply};
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tonic::transport::{Channel, Endpoint};

use crate::event::PeerEvent;
use crate::lateness::{LatenessHistogram, LatenessSnapshot};
use crate::proto::heartbeat_service_client::HeartbeatServiceClient;
use crate::proto::HeartbeatMessage;

/// Events buffered per subscriber before the slowest starts skipping.
const EVENT_BUFFER: usize = 4096;

/// The table, the wake-up signal of its driver and the event fan-out.
pub(crate) struct Monitor {
    table: Mutex<PeerTable>,
    wake: Notify,
    events: broadcast::Sender<PeerEvent>,
    learned_epochs: mpsc::UnboundedSender<(Arc<str>, u64)>,
    lateness: LatenessHistogram,
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

    /// Drives the table until `shutdown` turns true.
    pub(crate) async fn run(
        self: Arc<Self>,
        identity: String,
        epoch: u64,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut transport = Transport::new(identity, epoch);
        let mut inflight: FuturesUnordered<InFlight> = FuturesUnordered::new();
        let mut due: Vec<Probe> = Vec::new();
        loop {
            let deadline = self.lock().next_deadline();
            let sleep = async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Some(outcome) = inflight.next(), if !inflight.is_empty() => {
                    self.apply(outcome);
                }
                () = self.wake.notified() => {
                    let table = self.lock();
                    transport.forget_unused(&table);
                }
                () = sleep => {
                    let now = tokio::time::Instant::now().into_std();
                    let mut table = self.lock();
                    table.poll_due(now, &mut due);
                    for probe in due.drain(..) {
                        self.lateness.record(probe.sent_at.saturating_duration_since(probe.due));
                        if let Some(spec) = table.spec(probe.key) {
                            let client = transport.client(&spec.host, spec.port, spec.detector.timeout);
                            inflight.push(transport.probe(client, probe, spec.detector.timeout));
                        }
                    }
                }
            }
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
struct Transport {
    identity: String,
    epoch: u64,
    clients: HashMap<(String, u16), HeartbeatServiceClient<Channel>>,
}

impl Transport {
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
