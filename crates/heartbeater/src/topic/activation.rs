//! One activation of a publisher's heartbeats: the timer task that ticks the
//! connection tracker and sends heartbeat requests, and the thread that runs
//! the listener's callbacks.
//!
//! The timer never waits for the listener: transitions go through a channel
//! to a blocking thread that calls the listener one transition at a time.
//! A gate (a mutex around a `cancelled` flag) makes deactivation exact: the
//! listener thread checks the flag and calls back while holding the gate, and
//! `stop` sets the flag under the gate, so once `stop` returns no callback is
//! running and none will start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, Weak};
use std::thread::ThreadId;

use heartbeater_core::{ClientConnectionTracker, ConnectionChange, TrackerConfig};
use tokio::runtime::Handle;
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

pub(crate) struct Activation {
    tracker: Tracker,
    timer: JoinHandle<()>,
    changes: std_mpsc::Sender<ConnectionChange<Uuid>>,
    cancelled: Arc<AtomicBool>,
    gate: Arc<Mutex<()>>,
    listener_thread: Arc<Mutex<Option<ThreadId>>>,
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
        let (changes, rx) = std_mpsc::channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(Mutex::new(()));
        let listener_thread = Arc::new(Mutex::new(None));

        {
            let (cancelled, gate) = (cancelled.clone(), gate.clone());
            let listener_thread = listener_thread.clone();
            runtime.spawn_blocking(move || {
                *listener_thread.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(std::thread::current().id());
                while let Ok(change) = rx.recv() {
                    let _running = gate.lock().unwrap_or_else(|e| e.into_inner());
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
            });
        }

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
            gate,
            listener_thread,
        }
    }

    /// A heartbeat answer from `instance`.
    pub(crate) fn on_response(&self, request_id: u64, instance: Uuid) {
        let change = lock(&self.tracker).on_response(request_id, instance, now());
        if let Some(change) = change {
            let _ = self.changes.send(change);
        }
    }

    /// Stops the timer and the callbacks; returns the next request id, for
    /// the next activation to continue from.
    pub(crate) fn stop(self) -> u64 {
        self.timer.abort();
        self.cancelled.store(true, Ordering::SeqCst);
        let here = Some(std::thread::current().id());
        let on_listener_thread = *self
            .listener_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            == here;
        if !on_listener_thread {
            // Wait for a callback in progress; the next one sees the flag.
            // (From inside a callback the gate is already ours.)
            drop(self.gate.lock().unwrap_or_else(|e| e.into_inner()));
        }
        let next = lock(&self.tracker).next_request_id();
        drop(self.changes);
        next
    }
}

fn lock(tracker: &Tracker) -> std::sync::MutexGuard<'_, ClientConnectionTracker<Uuid>> {
    // Tracker methods do not panic; a poisoned lock still holds a usable tracker.
    tracker.lock().unwrap_or_else(|e| e.into_inner())
}
