//! Reads whose cost grows with the registry (`ListPeers` pages, `WatchPeers`
//! snapshots, the HTTP API's list) are served a bounded number at a time;
//! past it, callers are told to come back, and cheap reads go on.

mod common;

use std::time::Duration;

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
async fn watchers_that_stop_reading_their_snapshot_hold_no_place() {
    // A node of 60,000 peers: a snapshot (about 5 MB) nobody reads stalls
    // past what HTTP/2 buffers for it (2 MB a stream).
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
    // More stalled snapshots than the node serves heavy reads at once
    // (32), each on a connection of its own: stalled streams fill an HTTP/2
    // connection's window, and the answers checked below need room. A
    // snapshot counts as a heavy read while it copies a page, not while it
    // waits for its reader, so every one of them is admitted.
    let mut stalled = Vec::new();
    for n in 0..40 {
        let other =
            HeartbeatClient::new(host, port.parse().expect("port"), Duration::from_secs(10))
                .expect("client");
        let watch = other
            .watch_peers(true)
            .await
            .unwrap_or_else(|e| panic!("snapshot watch {n} refused: {e}"));
        stalled.push((other, watch));
        // Let it fill its queue and stall before the next.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Meanwhile everyone else is served: pages, snapshots, the HTTP list.
    let page = client
        .list_peers_page(0, String::new())
        .await
        .expect("a page while 40 snapshots stall");
    assert_eq!(page.peers.len(), 1_000);
    let _reading = client
        .watch_peers(true)
        .await
        .expect("a snapshot while 40 stall");
    let status = http_status(&http, "/api/peers");
    assert!(status.contains(" 200 "), "{status}");
    assert!(http_status(&http, "/healthz").contains(" 200 "));
    drop(stalled);
}
