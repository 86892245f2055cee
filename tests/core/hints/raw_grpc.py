"""A Python team calling the service through the generated gRPC stub (``policy_pb2_grpc``), on the
channel and metadata of a :class:`PolicyClient` or on its own ``stub``."""

from __future__ import annotations

from flowrl_deploy.client import PolicyClient
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.proto.flowrl.v1 import policy_pb2_grpc as pb_grpc


def obs_dim(client: PolicyClient) -> int:
    stub = pb_grpc.PolicyServiceStub(client.channel)
    reply: pb.GetSpecReply = stub.GetSpec(pb.GetSpecRequest(), timeout=1.0, metadata=client.metadata)
    return reply.obs_dim


def stream(client: PolicyClient) -> None:
    stub: pb_grpc.PolicyServiceStub = client.stub
    for reply in stub.StreamAct(iter([pb.StreamActRequest(session_id="a", seq=1)])):
        print(reply.seq, reply.status.code)
