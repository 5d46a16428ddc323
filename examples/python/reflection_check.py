"""Explores a node through server reflection, the way Python's
grpcio-reflection does: over grpc.reflection.v1alpha, the only version it
speaks (older grpcurl, Evans and Postman builds too).

Usage: reflection_check.py HOST:PORT

Lists the node's services and resolves RegisterPeer's request type from the
descriptors the node serves, with no .proto at hand. Exits non-zero on the
first failed check.
"""

import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

EXPECTED = {
    "heartbeater.v1.HeartbeatService",
    "heartbeater.v1.TopicService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}


def main() -> int:
    target = sys.argv[1]
    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        missing = EXPECTED - services
        assert not missing, f"not listed over v1alpha: {sorted(missing)} (listed: {sorted(services)})"
        pool = DescriptorPool(database)
        method = pool.FindMethodByName("heartbeater.v1.HeartbeatService.RegisterPeer")
        request = method.input_type
        assert request.full_name == "heartbeater.v1.RegisterPeerRequest", request.full_name
        assert "heartbeat_freq_millis" in request.fields_by_name, list(request.fields_by_name)
    print(f"python reflection check (v1alpha): {len(services)} services, RegisterPeer resolved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
