//! Reads whose cost grows with the registry (`ListPeers` pages, `WatchPeers`
//! snapshots, the HTTP API's list) are served a bounded number at a time;
//! past it, callers are told to come back, and cheap reads go on.

mod common;

use std::time::{Duration, Instant};

use common::Serve;
use heartbeater::HeartbeatClient;

/// The status line of `GET path` on `addr`.
fn http_status(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the HTTP listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut raw = String::new();
    let _ = stream.read_to_string(&mut raw);
    raw.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_reads_past_the_limit_are_told_to_come_back() {
    // A node of 60,000 peers: a snapshot (about 5 MB) nobody reads stalls
    // past what HTTP/2 buffers for it (2 MB a stream), holding its share of
    // the limit.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = heartbeater::RocksDbStore::open(dir.path()).expect("store");
        common::fill_registry(&store, 60_000);
    }
    let node = Serve::start(&[
        "--data-dir",
        dir.path().to_str().expect("utf-8"),
        "--http-listen",
        "127.0.0.1:0",
    ]);
    let http = node.started["http_listen"]
        .as_str()
        .expect("http")
        .to_owned();
    let (host, port) = node.addr.rsplit_once(':').expect("host:port");
    let client = HeartbeatClient::new(host, port.parse().expect("port"), Duration::from_secs(10))
        .expect("client");
    assert!(http_status(&http, "/api/peers").contains(" 200 "));

    // Each on a connection of its own: stalled streams fill an HTTP/2
    // connection's window, and the answers checked below need room.
    let mut stalled = Vec::new();
    for _ in 0..32 {
        let other =
            HeartbeatClient::new(host, port.parse().expect("port"), Duration::from_secs(10))
                .expect("client");
        let watch = other.watch_peers(true).await.expect("a snapshot watch");
        stalled.push((other, watch));
    }
    // Let the 32 snapshots fill their queues and stall.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = match client.list_peers_page(0, String::new()).await {
        Ok(page) => panic!("a 33rd heavy read served {} peers", page.peers.len()),
        Err(e) => e.to_string(),
    };
    assert!(
        text.contains("RESOURCE_EXHAUSTED")
            || text.contains("resource exhausted")
            || text.contains("at once"),
        "{text}"
    );
    assert!(client.watch_peers(true).await.is_err(), "a 33rd snapshot");
    let status = http_status(&http, "/api/peers");
    assert!(status.contains(" 503 "), "{status}");
    // Cheap reads go on meanwhile.
    assert!(http_status(&http, "/healthz").contains(" 200 "));
    let _cheap = client
        .watch_peers(false)
        .await
        .expect("a watch without snapshot");

    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.list_peers_page(0, String::new()).await {
            Ok(page) => {
                assert_eq!(page.peers.len(), 1_000);
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "still refused: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(http_status(&http, "/api/peers").contains(" 200 "));
}
