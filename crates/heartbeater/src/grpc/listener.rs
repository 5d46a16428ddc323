//! The node's gRPC listener: accepts TCP connections, holds each client
//! address to its share of connections, and runs the TLS handshake when
//! the node has TLS, before anything reaches HTTP/2.
//!
//! Handshakes run in tasks of their own with a deadline, so a client that
//! opens a connection and sends nothing holds one connection slot for a few
//! seconds, never the accept loop.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::client_share::Refused;
use crate::grpc::connection::{Claimant, ConnInfo};
use crate::grpc::tls::TlsSlot;
use crate::log_limit::SharedLogLimiter;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most TLS handshakes in progress at once: connections that have not
/// finished theirs are the cheapest thing for a flood to pile up, from any
/// number of addresses, so they get a bound of their own.
pub(crate) const MAX_HANDSHAKES: usize = 1024;

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted connection, plain or TLS, as the gRPC server sees it.
pub(crate) struct Conn {
    stream: Stream,
    info: ConnInfo,
    _slot: crate::client_share::ClientClaim,
    /// Closed once it has had no call for this.
    idle: Duration,
    /// Fires when the connection may have been idle for `idle`.
    idle_timer: Pin<Box<tokio::time::Sleep>>,
    counters: Arc<ListenerCounters>,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let conn = self.get_mut();
        let read = match &mut conn.stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if read.is_ready() {
            // Whatever came (a new call among it) is handed on.
            return read;
        }
        // Nothing to read: an end of stream here, once the connection has
        // had no call for `idle`, makes HTTP/2 close it.
        loop {
            if conn.idle_timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            match conn.info.activity.idle_left(conn.idle) {
                None => {
                    conn.counters.idle.fetch_add(1, Ordering::Relaxed);
                    return Poll::Ready(Ok(()));
                }
                Some(left) => conn
                    .idle_timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + left),
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Gives back a handshake's place when its task ends, however it ends.
struct Decrement(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Decrement {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the listener has refused since the node started.
#[derive(Default)]
pub(crate) struct ListenerCounters {
    /// Connections closed at once: their address had its share open.
    pub(crate) over_limit: AtomicU64,
    /// Connections closed at once: the node had its most open.
    pub(crate) over_total: AtomicU64,
    /// TLS handshakes that failed or did not finish in time.
    pub(crate) handshakes_failed: AtomicU64,
    /// Plain-text connections closed because their client sent no HTTP/2
    /// preface in time (or too many were waiting for theirs).
    pub(crate) silent: AtomicU64,
    /// Connections closed after a while without a call.
    pub(crate) idle: AtomicU64,
}

/// How long a plain-text client has to send the HTTP/2 connection preface:
/// as long as a TLS client has for its handshake.
pub(crate) const PREFACE_TIMEOUT: Duration = HANDSHAKE_TIMEOUT;

/// Length of the HTTP/2 client connection preface
/// (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
const PREFACE_BYTES: usize = 24;

/// Returns once the client has sent a preface's worth of bytes, or closed,
/// or failed: HTTP/2 then judges what it sent.
async fn preface(socket: &TcpStream) {
    let mut buf = [0u8; PREFACE_BYTES];
    loop {
        match socket.peek(&mut buf).await {
            Ok(n) if n == 0 || n >= PREFACE_BYTES => return,
            // Part of it: the rest is on its way, or never comes.
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(_) => return,
        }
    }
}

/// What the listener holds its clients to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListenerLimits {
    /// Connections open at once, from all clients.
    pub(crate) max_connections: usize,
    /// Connections open at once from one client (IPv4 address, IPv6 /64).
    pub(crate) max_per_address: usize,
    /// Handshakes (TLS, or a plain-text preface) in progress at once.
    pub(crate) max_handshakes: usize,
    /// How long a plain-text client has to send its HTTP/2 preface.
    pub(crate) first_bytes: Duration,
    /// How long a connection may go without a call.
    pub(crate) idle: Duration,
}

/// Accepts connections on `listener` until `shutdown`, and yields them
/// ready for HTTP/2: within `limits` (per client and in all), through the
/// TLS handshake when `tls` holds a configuration at accept time. The task
/// owns the listener: once it has ended, the port is free again.
pub(crate) fn incoming(
    listener: TcpListener,
    tls: TlsSlot,
    limits: ListenerLimits,
    counters: Arc<ListenerCounters>,
    mut shutdown: watch::Receiver<bool>,
) -> (
    ReceiverStream<Result<Conn, io::Error>>,
    tokio::task::JoinHandle<()>,
) {
    let ListenerLimits {
        max_connections,
        max_per_address,
        max_handshakes,
        first_bytes,
        idle,
    } = limits;
    let (tx, rx) = mpsc::channel(64);
    let accepting = tokio::spawn(async move {
        let per_address = Arc::new(crate::client_share::ClientShares::with_total(
            max_connections,
        ));
        let refused_log = SharedLogLimiter::default();
        let failed_log = Arc::new(SharedLogLimiter::default());
        let handshaking = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        loop {
            let accepted = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (socket, remote) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little
                    // rather than spin; the listener itself is still fine.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let slot = match per_address.take(remote.ip(), max_per_address) {
                Ok(slot) => slot,
                Err(refused) => {
                    let total = match refused {
                        Refused::ClientShare => &counters.over_limit,
                        Refused::Total => &counters.over_total,
                    };
                    total.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = refused_log.due() {
                        match refused {
                            Refused::ClientShare => tracing::warn!(client = %remote.ip(),
                                limit = max_per_address, suppressed,
                                "refused a connection: this client has its share of connections open"),
                            Refused::Total => tracing::warn!(client = %remote.ip(),
                                limit = max_connections, suppressed,
                                "refused a connection: the node has its most connections open"),
                        }
                    }
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            let tcp = TcpConnectInfo {
                local_addr: socket.local_addr().ok(),
                remote_addr: Some(remote),
            };
            let Some(config) = tls.current() else {
                // In plain text the HTTP/2 preface is the handshake: a client
                // that connects and sends nothing holds its slot for
                // `first_bytes`, not for ever.
                if handshaking.load(Ordering::Acquire) >= max_handshakes {
                    counters.silent.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                handshaking.fetch_add(1, Ordering::AcqRel);
                let (tx, counters) = (tx.clone(), counters.clone());
                let handshaking = handshaking.clone();
                tokio::spawn(async move {
                    let _done = Decrement(handshaking);
                    if tokio::time::timeout(first_bytes, preface(&socket))
                        .await
                        .is_err()
                    {
                        counters.silent.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    let conn = Conn {
                        stream: Stream::Plain(socket),
                        info: ConnInfo {
                            tcp,
                            client: Claimant::Address(remote.ip()),
                            activity: crate::grpc::connection::Activity::new(),
                        },
                        _slot: slot,
                        idle,
                        idle_timer: Box::pin(tokio::time::sleep(idle)),
                        counters,
                    };
                    let _ = tx.send(Ok(conn)).await;
                });
                continue;
            };
            if handshaking.load(Ordering::Acquire) >= max_handshakes {
                counters.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                if failed_log.due().is_some() {
                    tracing::warn!(client = %remote, "refused a connection: {max_handshakes} TLS handshakes are in progress");
                }
                continue;
            }
            handshaking.fetch_add(1, Ordering::AcqRel);
            let (tx, counters, failed_log) = (tx.clone(), counters.clone(), failed_log.clone());
            let handshaking = handshaking.clone();
            tokio::spawn(async move {
                let _done = Decrement(handshaking);
                let acceptor = tokio_rustls::TlsAcceptor::from(config.rustls());
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                    Ok(Ok(stream)) => {
                        let client = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .map_or(Claimant::Address(remote.ip()), |cert| {
                                Claimant::Certificate(*blake3::hash(cert.as_ref()).as_bytes())
                            });
                        let conn = Conn {
                            stream: Stream::Tls(Box::new(stream)),
                            info: ConnInfo {
                                tcp,
                                client,
                                activity: crate::grpc::connection::Activity::new(),
                            },
                            _slot: slot,
                            idle,
                            idle_timer: Box::pin(tokio::time::sleep(idle)),
                            counters: counters.clone(),
                        };
                        let _ = tx.send(Ok(conn)).await;
                    }
                    outcome => {
                        counters.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                        if failed_log.due().is_some() {
                            let reason = match outcome {
                                Ok(Err(e)) => e.to_string(),
                                _ => "timed out".to_owned(),
                            };
                            tracing::warn!(client = %remote, %reason, "TLS handshake failed");
                        }
                    }
                }
            });
        }
    });
    (ReceiverStream::new(rx), accepting)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tls() -> crate::grpc::tls::TlsServerConfig {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        crate::grpc::tls::TlsServerConfig::from_pem(
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            None,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn silent_connections_hold_at_most_the_handshake_bound() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(ListenerCounters::default());
        let (_stop, shutdown) = watch::channel(false);
        let (_incoming, _task) = incoming(
            listener,
            TlsSlot::new(Some(tls())),
            ListenerLimits {
                max_connections: 1000,
                max_per_address: 100,
                max_handshakes: 4,
                first_bytes: PREFACE_TIMEOUT,
                idle: Duration::from_secs(300),
            },
            counters.clone(),
            shutdown,
        );
        // Six clients connect and say nothing: four handshakes wait, two
        // connections are closed at once.
        let mut silent = Vec::new();
        for _ in 0..6 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        let start = tokio::time::Instant::now();
        while counters.handshakes_failed.load(Ordering::Relaxed) < 2 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no connection refused"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(counters.handshakes_failed.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_plain_text_connection_that_sends_no_preface_is_closed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_stream::StreamExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(ListenerCounters::default());
        let (_stop, shutdown) = watch::channel(false);
        let (mut incoming, _task) = incoming(
            listener,
            TlsSlot::new(None),
            ListenerLimits {
                max_connections: 1000,
                max_per_address: 100,
                max_handshakes: 4,
                first_bytes: Duration::from_millis(200),
                idle: Duration::from_secs(300),
            },
            counters.clone(),
            shutdown,
        );
        // Silent, and half a preface: both closed after the deadline.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"PRI * HTTP/2.0").await.unwrap();
        for client in [&mut silent, &mut half] {
            let mut buf = [0u8; 8];
            let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await;
            assert!(
                matches!(read, Ok(Ok(0)) | Ok(Err(_))),
                "still open: {read:?}"
            );
        }
        assert_eq!(counters.silent.load(Ordering::Relaxed), 2);
        // A client that sends its preface is handed to HTTP/2.
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let conn = tokio::time::timeout(Duration::from_secs(5), incoming.next())
            .await
            .expect("handed over");
        assert!(matches!(conn, Some(Ok(_))));
    }
}
