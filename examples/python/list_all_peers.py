"""Lists every peer of a node page by page, as any gRPC client would.

Usage: list_all_peers.py HOST:PORT EXPECTED_COUNT

Follows `next_page_token` until it comes back empty, checks that the peers
arrive in id order with none repeated and that there are EXPECTED_COUNT of
them, and prints how many pages it took.
"""

import sys

import grpc

from heartbeater.v1 import heartbeater_pb2 as pb
from heartbeater.v1 import heartbeater_pb2_grpc as rpc


def main() -> int:
    target, expected = sys.argv[1], int(sys.argv[2])
    stub = rpc.HeartbeatServiceStub(grpc.insecure_channel(target))
    ids, pages, token = [], 0, ""
    while True:
        page = stub.ListPeers(pb.ListPeersRequest(page_size=5000, page_token=token), timeout=30)
        pages += 1
        ids.extend(p.peer_id for p in page.peers)
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert len(ids) == expected, f"{len(ids)} peers listed, {expected} registered"
    assert all(a < b for a, b in zip(ids, ids[1:])), "not in id order, or repeated"
    try:
        stub.ListPeers(pb.ListPeersRequest(page_token="not a token"), timeout=5)
        raise AssertionError("a forged page token was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    print(f"python paging check: {len(ids)} peers in {pages} pages, in order")
    return 0


if __name__ == "__main__":
    sys.exit(main())
