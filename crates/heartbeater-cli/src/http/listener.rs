//! The HTTP listener's connections, within bounds: each client (an IPv4
//! address, an IPv6 /64) holds at most its share, and all of them together
//! at most a total, so that browsers, scrapers and whoever else reaches the
//! port cannot take the node's file descriptors.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use heartbeater::client_share::{ClientClaim, ClientShares};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// HTTP connections open at once, from all clients.
pub const MAX_CONNECTIONS: usize = 256;

/// HTTP connections one client may hold open: a browser opens about six,
/// an event stream holds one.
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 32;

/// A TCP listener that closes, as soon as it accepts it, a connection past
/// its client's share or the total.
pub struct LimitedListener {
    inner: TcpListener,
    shares: Arc<ClientShares>,
    per_client: usize,
    refused: u64,
}

impl LimitedListener {
    /// `inner`, holding clients to `per_client` connections each and
    /// `total` together.
    pub fn new(inner: TcpListener, per_client: usize, total: usize) -> Self {
        Self {
            inner,
            shares: Arc::new(ClientShares::with_total(total)),
            per_client,
            refused: 0,
        }
    }
}

/// An accepted connection with its place in the client's share, given
/// back when the connection closes.
pub struct Claimed {
    stream: TcpStream,
    _claim: ClientClaim,
}

/// The remote address of an HTTP connection, for handlers
/// (`ConnectInfo<Client>`).
#[derive(Debug, Clone, Copy)]
pub struct Client(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, LimitedListener>>
    for Client
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, LimitedListener>) -> Self {
        Client(*stream.remote_addr())
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = Claimed;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Claimed, SocketAddr) {
        loop {
            let (stream, remote) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "the HTTP listener could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.shares.take(remote.ip(), self.per_client) {
                Ok(claim) => {
                    return (
                        Claimed {
                            stream,
                            _claim: claim,
                        },
                        remote,
                    )
                }
                Err(why) => {
                    self.refused += 1;
                    if self.refused.is_power_of_two() {
                        tracing::warn!(client = %remote.ip(), ?why, refused = self.refused,
                            "the HTTP listener closed a connection over its limits");
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for Claimed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Claimed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
