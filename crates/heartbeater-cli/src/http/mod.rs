//! The node's HTTP listener, beside its gRPC port: Prometheus `/metrics`,
//! a JSON API (`/api/peers`, `/api/topics`, `/api/events` as server-sent
//! events), `/healthz` and `/readyz` for orchestrators, and the live status
//! page at `/`, embedded in the binary.
//!
//! It reads the node through its public API only; nothing it serves can
//! change the node. Meant for loopback or a trusted network (its default is
//! 127.0.0.1:9181): it has no TLS and no token, and what it shows (peer ids
//! and addresses) is what `ListPeers` shows.

mod listener;
mod metrics;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::{Stream, StreamExt};
use heartbeater::HeartbeatServer;
use serde_json::json;
use tokio::sync::{broadcast, oneshot, Semaphore};
use tokio::task::JoinHandle;

use crate::address::HostPort;

const STATUS_PAGE: &str = include_str!("status.html");

/// Events replayed to a new `/api/events` stream (and kept for it).
const RECENT_EVENTS: usize = 100;

/// `/api/events` streams open at once; more get 503. Each holds a
/// connection and a queue, so their number is bounded like everything else
/// a client can make the node keep.
const MAX_EVENT_STREAMS: usize = 64;

/// `/api/events` streams one client (an IPv4 address, an IPv6 /64) may hold
/// at once: a status page opens one per tab, and one client must not take
/// every stream there is.
const MAX_EVENT_STREAMS_PER_CLIENT: usize = 8;

/// Events queued per stream; a stream further behind is ended (the browser
/// reconnects and gets the replay).
const STREAM_QUEUE: usize = 256;

/// The recent peer events as JSON, and the live feed of new ones.
struct EventLog {
    recent: Mutex<VecDeque<String>>,
    live: broadcast::Sender<String>,
}

impl EventLog {
    fn record(&self, json: String) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_EVENTS {
            recent.pop_front();
        }
        recent.push_back(json.clone());
        drop(recent);
        // No stream open is not an error.
        let _ = self.live.send(json);
    }

    fn replay(&self) -> Vec<String> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

#[derive(Clone)]
struct App {
    server: Arc<HeartbeatServer>,
    events: Arc<EventLog>,
    streams: Arc<Semaphore>,
    per_client: Arc<heartbeater::client_share::ClientShares>,
    label_limit: usize,
}

/// A running HTTP listener.
pub struct HttpServer {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    serve: JoinHandle<()>,
    feed: JoinHandle<()>,
}

impl HttpServer {
    /// Binds `at`, before the node is built: `serve` must not store a new
    /// epoch when it cannot serve what it was asked to.
    pub async fn bind(at: &HostPort) -> anyhow::Result<tokio::net::TcpListener> {
        tokio::net::TcpListener::bind((at.host.as_str(), at.port))
            .await
            .context("cannot bind")
    }

    /// Serves `server`'s state on `listener` (from [`HttpServer::bind`]);
    /// `label_limit` is the cardinality guard of `/metrics`
    /// (`metrics_peer_labels`).
    pub async fn start(
        listener: tokio::net::TcpListener,
        server: Arc<HeartbeatServer>,
        label_limit: usize,
    ) -> anyhow::Result<HttpServer> {
        let addr = listener.local_addr().context("no local address")?;
        let (live, _) = broadcast::channel(STREAM_QUEUE);
        let events = Arc::new(EventLog {
            recent: Mutex::new(VecDeque::with_capacity(RECENT_EVENTS)),
            live,
        });
        let feed = {
            let events = events.clone();
            let mut stream = server.events();
            let identity = server.identity();
            tokio::spawn(async move {
                while let Some(e) = stream.next().await {
                    events.record(crate::output::event_json(&e.to_proto(&identity)).to_string());
                }
            })
        };
        let app = App {
            server,
            events,
            streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
            per_client: Arc::default(),
            label_limit,
        };
        let router = Router::new()
            .route("/", get(status_page))
            .route("/metrics", get(metrics_text))
            .route("/api/peers", get(api_peers))
            .route("/api/topics", get(api_topics))
            .route("/api/events", get(api_events))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(app);
        let (shutdown, stopped) = oneshot::channel::<()>();
        let serve = tokio::spawn(async move {
            let router = router.into_make_service_with_connect_info::<listener::Client>();
            let listener = listener::LimitedListener::new(
                listener,
                listener::MAX_CONNECTIONS_PER_CLIENT,
                listener::MAX_CONNECTIONS,
            );
            let graceful = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = graceful.await {
                tracing::error!(error = %e, "the HTTP listener failed");
            }
        });
        Ok(HttpServer {
            addr,
            shutdown,
            serve,
            feed,
        })
    }

    /// The bound address (the port chosen when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, and ends open event streams.
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        self.feed.abort();
        // Event streams never end by themselves: give requests in progress
        // a moment, then close whatever is left.
        let serve = self.serve;
        tokio::pin!(serve);
        if tokio::time::timeout(Duration::from_secs(1), &mut serve)
            .await
            .is_err()
        {
            serve.abort();
        }
    }
}

fn json_response(value: serde_json::Value) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        value.to_string(),
    )
        .into_response()
}

async fn status_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        STATUS_PAGE,
    )
        .into_response()
}

/// OpenMetrics for a scraper that asks for it (Prometheus does), the
/// classic text format otherwise.
async fn metrics_text(State(app): State<App>, headers: axum::http::HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let snapshot = metrics::Snapshot::take(&app.server, app.label_limit).await;
    match snapshot.encode() {
        Ok(text) if openmetrics => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            metrics::to_classic_text(&text),
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response(),
    }
}

async fn api_peers(State(app): State<App>) -> Response {
    // Already ordered by id; one of the node's bounded heavy reads.
    let Some(peers) = app.server.try_peers().await else {
        let mut busy = json_response(json!({
            "error": "too many peer lists are being served at once; try again shortly",
        }));
        *busy.status_mut() = axum::http::StatusCode::SERVICE_UNAVAILABLE;
        busy.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("1"),
        );
        return busy;
    };
    let quarantined: Vec<_> = app
        .server
        .quarantined_peers()
        .into_iter()
        .map(|q| json!({"peer_id": q.peer_id, "reason": q.reason}))
        .collect();
    json_response(json!({
        "identity": app.server.identity(),
        "epoch": app.server.epoch(),
        "peers": peers
            .into_iter()
            .map(|p| crate::output::peer_json(&heartbeater::status_to_proto(p)))
            .collect::<Vec<_>>(),
        "quarantined": quarantined,
    }))
}

async fn api_topics(State(app): State<App>) -> Response {
    let topics: Vec<_> = app
        .server
        .topics()
        .into_iter()
        .map(|t| {
            json!({
                "topic": t.topic,
                "subscribers": t.subscribers.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
                "heartbeats_active": t.heartbeats_active,
                "heartbeats_sent": t.heartbeats_sent,
                "connected": t.connected.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
            })
        })
        .collect();
    json_response(json!({ "topics": topics }))
}

async fn api_events(
    State(app): State<App>,
    axum::extract::ConnectInfo(listener::Client(client)): axum::extract::ConnectInfo<
        listener::Client,
    >,
) -> Response {
    let Ok(claim) = app
        .per_client
        .take(client.ip(), MAX_EVENT_STREAMS_PER_CLIENT)
    else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this address has {MAX_EVENT_STREAMS_PER_CLIENT} event streams open, its most\n"
            ),
        )
            .into_response();
    };
    let Ok(permit) = app.streams.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many event streams open (at most {MAX_EVENT_STREAMS})\n"),
        )
            .into_response();
    };
    // Subscribe before copying the replay, so nothing falls between the
    // two; an event in both is shown once by the page (it keys events).
    let live = app.events.live.subscribe();
    let replay = app.events.replay();
    Sse::new(event_stream(replay, live, (permit, claim)))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn event_stream(
    replay: Vec<String>,
    live: broadcast::Receiver<String>,
    permit: (
        tokio::sync::OwnedSemaphorePermit,
        heartbeater::client_share::ClientClaim,
    ),
) -> impl Stream<Item = Result<Event, Infallible>> {
    let live = futures_util::stream::unfold(live, |mut rx| async move {
        // A stream that fell behind ends: its client reconnects and
        // starts again from the replay, instead of the node queueing for it.
        rx.recv().await.ok().map(|json| (json, rx))
    });
    futures_util::stream::iter(replay)
        .chain(live)
        .map(move |json| {
            let _held = &permit;
            Ok(Event::default().event("peer").data(json))
        })
}

async fn healthz(State(app): State<App>) -> Response {
    if app.server.is_running() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "stopped\n").into_response()
    }
}

/// Ready once the node serves: identity and registry loaded, gRPC bound.
/// Peers being down does not make this node unready: it is the one that
/// says so.
async fn readyz(State(app): State<App>) -> Response {
    let status = if app.server.is_running() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let counts = app.server.peer_counts().await;
    let body = json!({
        "ready": status == StatusCode::OK,
        "identity": app.server.identity(),
        "epoch": app.server.epoch(),
        "peers": {"alive": counts.alive, "unreachable": counts.unreachable, "unknown": counts.unknown},
    });
    let mut response = json_response(body);
    *response.status_mut() = status;
    response
}
