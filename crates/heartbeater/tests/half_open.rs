//! A gRPC client that vanished without closing its connection (its host
//! gone, a half-open TCP connection) does not hold the node's connection
//! slot and descriptor for ever: the node pings it over HTTP/2 and closes
//! the connection when no acknowledgement comes.

use std::time::Duration;

use heartbeater::HeartbeatServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The HTTP/2 connection preface and an empty SETTINGS frame: what a
/// client sends before it goes silent for good.
const HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Whether the node closes a connection whose client says hello and then
/// never answers again, within `patience`.
async fn closed_within(keepalive: Option<(Duration, Duration)>, patience: Duration) -> bool {
    let mut builder = HeartbeatServer::builder().server_port(0).in_memory();
    if let Some((interval, timeout)) = keepalive {
        builder = builder.http2_keepalive(interval, timeout);
    }
    let node = builder.build().unwrap();
    let addr = node.start().await.unwrap();
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client.write_all(HELLO).await.unwrap();
    // Read what the node sends (its SETTINGS, then pings), acknowledging
    // nothing, until it closes or patience runs out.
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(patience, async {
        loop {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok();
    node.stop().await.unwrap();
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_acknowledges_a_ping_is_closed() {
    let fast = Some((Duration::from_millis(200), Duration::from_millis(200)));
    assert!(closed_within(fast, Duration::from_secs(10)).await);
}
