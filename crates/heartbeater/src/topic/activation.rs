//! One activation of a publisher's heartbeats: the timer task that ticks the
//! connection tracker and sends heartbeat requests, and the task that hands
//! the listener its callbacks.
//!
//! The timer never waits for the listener: transitions go through a channel
//! to the callback task, which calls the listener one transition at a time,
//! in order. The callbacks are user code that may block, so they run on a
//! blocking thread; but the task holds one only while a batch of callbacks
//! runs (one `spawn_blocking` per batch, awaited before the next, which keeps
//! them one at a time and in order). A thread of its own per activation would
//! sit idle for the activation's whole life, and a `spawn_blocking` loop would
//! hold one of the runtime's blocking threads (512 by default) just as long,
//! starving everything else that needs one (the registry's RocksDB commits).
//!
//! Stopping never waits for a callback: it raises a flag that is checked
//! before each callback, so no callback starts once `stop` has returned; one
//! already running finishes on its own. [`Stopped::callbacks_finished`] waits
//! for that, asynchronously.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use heartbeater_core::{ClientConnectionTracker, ConnectionChange, TrackerConfig};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::types::ClientConnectionListener;

/// Where an activation sends its heartbeat requests: the topic's hub, which
/// offers each to every subscriber. Held weakly, so that an activation never
/// keeps a dropped topic alive; it ends when the outlet is gone.
pub(crate) trait HeartbeatOutlet: Send + Sync + 'static {
    /// Offers heartbeat request `request_id` to every subscriber.
    fn send_heartbeat(&self, request_id: u64);
}

type Tracker = Arc<Mutex<ClientConnectionTracker<Uuid>>>;
type Changes = mpsc::UnboundedSender<ConnectionChange<Uuid>>;

/// Transitions handed to one blocking job at most: enough to amortise the
/// hand-over when many clients change at once, few enough that a stop is
/// noticed between batches.
const CALLBACK_BATCH: usize = 64;

pub(crate) struct Activation {
    tracker: Tracker,
    timer: JoinHandle<()>,
    // Unbounded, as each entry is one transition of one client and a client
    // changes at most once per answer or tick; the timer must never wait.
    changes: Changes,
    cancelled: Arc<AtomicBool>,
    cancel: oneshot::Sender<()>,
    callbacks: JoinHandle<()>,
}

/// A stopped activation.
pub(crate) struct Stopped {
    /// The next heartbeat request id, for the next activation to continue from.
    pub(crate) next_request: u64,
    callbacks: JoinHandle<()>,
}

impl Stopped {
    /// Waits until the callback that was running when the activation
    /// stopped (if any) has returned. No other callback starts.
    pub(crate) async fn callbacks_finished(self) {
        // An error is a panicking listener or a runtime shutting down: either
        // way, nothing of this activation runs any more.
        let _ = self.callbacks.await;
    }
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

impl Activation {
    /// Starts heartbeating `topic` through `outlet`, reporting to `listener`.
    pub(crate) fn start(
        runtime: &Handle,
        topic: String,
        outlet: Weak<dyn HeartbeatOutlet>,
        listener: Arc<dyn ClientConnectionListener>,
        config: TrackerConfig,
        first_request: u64,
    ) -> Self {
        let tracker: Tracker = Arc::new(Mutex::new(
            ClientConnectionTracker::new(config, now()).with_first_request_id(first_request),
        ));
        let (changes, rx) = mpsc::unbounded_channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let (cancel, cancel_rx) = oneshot::channel();
        let callbacks = runtime.spawn(run_callbacks(
            topic,
            listener,
            rx,
            cancelled.clone(),
            cancel_rx,
        ));

        let timer = {
            let tracker = tracker.clone();
            let changes = changes.clone();
            runtime.spawn(async move {
                loop {
                    let next = lock(&tracker).next_tick();
                    tokio::time::sleep_until(next.into()).await;
                    let Some(outlet) = outlet.upgrade() else {
                        return;
                    };
                    let tick = lock(&tracker).on_tick(now());
                    for client in tick.disconnected {
                        let _ = changes.send(ConnectionChange::Disconnected(client));
                    }
                    outlet.send_heartbeat(tick.request_id);
                }
            })
        };
        Self {
            tracker,
            timer,
            changes,
            cancelled,
            cancel,
            callbacks,
        }
    }

    /// The clients answering heartbeats now.
    pub(crate) fn connected(&self) -> Vec<Uuid> {
        lock(&self.tracker).connected().to_vec()
    }

    /// A heartbeat answer from `instance`.
    pub(crate) fn on_response(&self, request_id: u64, instance: Uuid) {
        let change = lock(&self.tracker).on_response(request_id, instance, now());
        self.report(change);
    }

    /// `instance` was dropped by the publisher: reported disconnected now if
    /// it was connected.
    pub(crate) fn forget(&self, instance: Uuid) {
        let change = lock(&self.tracker).forget(&instance);
        self.report(change);
    }

    fn report(&self, change: Option<ConnectionChange<Uuid>>) {
        if let Some(change) = change {
            // Fails only once the callback task is gone: then nobody listens.
            let _ = self.changes.send(change);
        }
    }

    /// Stops the timer and the callbacks, without waiting for a callback
    /// that is running.
    pub(crate) fn stop(self) -> Stopped {
        self.timer.abort();
        self.cancelled.store(true, Ordering::SeqCst);
        let _ = self.cancel.send(());
        let next_request = lock(&self.tracker).next_request_id();
        Stopped {
            next_request,
            callbacks: self.callbacks,
        }
    }
}

/// The callback task: takes the transitions in batches and runs each batch
/// on a blocking thread, one batch at a time.
async fn run_callbacks(
    topic: String,
    listener: Arc<dyn ClientConnectionListener>,
    mut changes: mpsc::UnboundedReceiver<ConnectionChange<Uuid>>,
    cancelled: Arc<AtomicBool>,
    mut cancel: oneshot::Receiver<()>,
) {
    let topic: Arc<str> = topic.into();
    let mut batch = Vec::with_capacity(CALLBACK_BATCH);
    loop {
        tokio::select! {
            biased;
            // Stopped, or the activation dropped without a stop.
            _ = &mut cancel => return,
            n = changes.recv_many(&mut batch, CALLBACK_BATCH) => if n == 0 { return },
        }
        let job = {
            let (topic, listener, cancelled) = (topic.clone(), listener.clone(), cancelled.clone());
            let batch = std::mem::take(&mut batch);
            tokio::task::spawn_blocking(move || {
                for change in batch {
                    // The flag is what makes "no callback starts after stop"
                    // hold: checked right before each one.
                    if cancelled.load(Ordering::SeqCst) {
                        return;
                    }
                    match change {
                        ConnectionChange::Connected(c) => listener.on_client_connected(&topic, c),
                        ConnectionChange::Disconnected(c) => {
                            listener.on_client_disconnected(&topic, c)
                        }
                    }
                }
            })
        };
        if let Err(e) = job.await {
            if e.is_panic() {
                tracing::error!(%topic, "a ClientConnectionListener callback panicked; the rest of its batch is lost");
            } else {
                return;
            }
        }
    }
}

fn lock(tracker: &Tracker) -> std::sync::MutexGuard<'_, ClientConnectionTracker<Uuid>> {
    // Tracker methods do not panic; a poisoned lock still holds a usable tracker.
    tracker.lock().unwrap_or_else(|e| e.into_inner())
}
