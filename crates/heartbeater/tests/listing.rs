//! `ListPeers` in pages: every peer once, in id order, however many there are.

mod common;

use std::time::Duration;

use futures_util::future::join_all;
use heartbeater::{ClientError, HeartbeatClient, RegisterPeerRequest, DEFAULT_PAGE_SIZE};

fn peer(i: usize) -> RegisterPeerRequest {
    common::idle_peer(&format!("peer-{i}"))
}

#[tokio::test]
async fn a_registry_larger_than_a_page_lists_completely_in_id_order() {
    let node = common::memory_node().await;
    let n = DEFAULT_PAGE_SIZE * 2 + 345;
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        for r in join_all(chunk.iter().map(|&i| node.register_peer(peer(i)))).await {
            r.unwrap();
        }
    }
    let port = node.local_addr().unwrap().port();
    let client = HeartbeatClient::new("127.0.0.1", port, Duration::from_secs(10)).unwrap();

    let first = client.list_peers_page(0, String::new()).await.unwrap();
    assert_eq!(
        first.peers.len(),
        DEFAULT_PAGE_SIZE,
        "0 asks for the default page size"
    );
    assert!(!first.next_page_token.is_empty());

    let mut expected: Vec<String> = (0..n).map(|i| format!("peer-{i}")).collect();
    expected.sort();
    let all = client.list_peers().await.unwrap();
    let ids: Vec<String> = all.peers.iter().map(|p| p.peer_id.clone()).collect();
    assert_eq!(ids, expected);
    assert!(all.next_page_token.is_empty());

    // Small pages, by hand: a page past the last is empty with no token.
    let mut seen = 0;
    let mut token = String::new();
    loop {
        let page = client.list_peers_page(700, token).await.unwrap();
        seen += page.peers.len();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, n);
}

#[tokio::test]
async fn a_page_token_the_node_did_not_issue_is_invalid_argument() {
    let node = common::memory_node().await;
    let port = node.local_addr().unwrap().port();
    let client = HeartbeatClient::new("127.0.0.1", port, Duration::from_secs(5)).unwrap();
    for bad in ["not-hex", "abc", &"61".repeat(300)] {
        let e = client
            .list_peers_page(10, bad.to_owned())
            .await
            .unwrap_err();
        match e {
            ClientError::InvalidArgument { field, .. } => {
                assert_eq!(field.as_deref(), Some("page_token"), "{bad}")
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}
