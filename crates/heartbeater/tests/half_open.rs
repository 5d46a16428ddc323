//! A gRPC client that vanished without closing its connection (its host
//! gone, a half-open TCP connection) does not hold the node's connection
//! slot and descriptor for ever: the node pings it over HTTP/2 and closes
//! the connection when no acknowledgement comes.

mod common;

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

/// A client that makes no call is closed after the idle timeout (its
/// HTTP/2 stack would answer every keepalive ping, so nothing else would
/// close it); one with a call in progress (a watch) is not, however long
/// the call lasts, and a client that calls again is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_call_is_closed_after_the_idle_timeout() {
    use tokio_stream::StreamExt;
    let node = HeartbeatServer::builder()
        .server_port(0)
        .in_memory()
        .connection_idle_timeout(Duration::from_secs(1))
        .build()
        .expect("build");
    let addr = node.start().await.expect("start");
    let port = addr.port();
    let idle =
        heartbeater::HeartbeatClient::new("127.0.0.1", port, Duration::from_secs(5)).unwrap();
    let watching =
        heartbeater::HeartbeatClient::new("127.0.0.1", port, Duration::from_secs(5)).unwrap();
    idle.heartbeat(heartbeater::HeartbeatMessage {
        client_id: "idle".into(),
        client_epoch: 0,
    })
    .await
    .expect("a first call");
    let mut events = watching.watch_peers(false).await.expect("a watch");
    let start = std::time::Instant::now();
    while node.security_stats().idle_connections == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the idle connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Only the idle one: the watch goes on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(node.security_stats().idle_connections, 1);
    node.register_peer(common::idle_peer("seen-by-the-watch"))
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("the watch still delivers");
    assert!(matches!(event, Some(Ok(_))), "{event:?}");
    // The idle client calls again: on a new connection.
    common::eventually_async("the idle client served again", || async {
        idle.heartbeat(heartbeater::HeartbeatMessage {
            client_id: "idle".into(),
            client_epoch: 0,
        })
        .await
        .ok()
    })
    .await;
    node.stop().await.unwrap();
}
