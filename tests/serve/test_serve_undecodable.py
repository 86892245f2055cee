"""A request whose bytes do not parse as its message: gRPC logged an ERROR with a five-line traceback
per call and answered INTERNAL, counted nowhere, and health's Check needs no token, so anyone reaching
the port could fill a robot's disk (500 calls: 3000 lines). It is now INVALID_ARGUMENT, counted, and
warned of at most once a minute."""

from __future__ import annotations

import logging
import time

import grpc
import numpy as np
import pytest
from tiny_policy import OBS_DIM, write_policy

from flowrl_deploy.codec import encode
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.serve import PolicyServer, ServeConfig

GARBAGE = b"\xff\xff\xff"
METHODS = [
    ("/grpc.health.v1.Health/Check", False),
    ("/flowrl.v1.PolicyService/Act", False),
    ("/flowrl.v1.PolicyService/StreamAct", True),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    policy = write_policy(tmp_path_factory.mktemp("undecodable") / "policy.onnx")
    with PolicyServer(ServeConfig(str(policy), port=0, grace_s=0)).start() as server:
        yield server


def _call(channel: grpc.Channel, method: str, streaming: bool) -> grpc.RpcError:
    raw = {"request_serializer": None, "response_deserializer": None}
    with pytest.raises(grpc.RpcError) as refused:
        if streaming:
            list(channel.stream_stream(method, **raw)(iter([GARBAGE]), timeout=10))
        else:
            channel.unary_unary(method, **raw)(GARBAGE, timeout=10)
    return refused.value


@pytest.mark.parametrize(("method", "streaming"), METHODS)
def test_undecodable_bytes_are_invalid_argument_and_counted(server, method, streaming):
    name = method.rsplit("/", 1)[-1]
    before = server.servicer.metrics.requests[(name, "INVALID_ARGUMENT")]
    with grpc.insecure_channel(server.address) as channel:
        error = _call(channel, method, streaming)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert error.details().startswith("the request is not a valid ") and " message (bytes of another message" in (
        error.details()
    )
    assert server.servicer.metrics.requests[(name, "INVALID_ARGUMENT")] == before + 1


def test_a_flood_of_undecodable_requests_logs_one_line_and_the_server_serves_on(tmp_path, caplog):
    policy = write_policy(tmp_path / "policy.onnx")  # a server of its own: the warning is once a minute
    server = PolicyServer(ServeConfig(str(policy), port=0, grace_s=0)).start()
    with server, caplog.at_level(logging.DEBUG), grpc.insecure_channel(server.address) as channel:
        for _ in range(50):
            _call(channel, "/grpc.health.v1.Health/Check", streaming=False)
        check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None)
        assert check(b"", timeout=10) is not None  # an empty HealthCheckRequest: served
    assert not [r for r in caplog.records if r.name.startswith("grpc")], [r.getMessage() for r in caplog.records]
    warnings = [r.getMessage() for r in caplog.records if "its bytes are no" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("refused a request to Check from ") and "HealthCheckRequest message" in warnings[0]


def test_a_stream_answers_its_good_requests_then_ends_at_an_undecodable_one(server):
    good = pb.StreamActRequest(seq=1, obs=encode(np.zeros(OBS_DIM, np.float32))).SerializeToString()
    with grpc.insecure_channel(server.address) as channel:
        stream = channel.stream_stream(
            "/flowrl.v1.PolicyService/StreamAct", request_serializer=None, response_deserializer=None
        )
        replies = stream(iter([good, good, GARBAGE, good]), timeout=10)
        answered = []
        with pytest.raises(grpc.RpcError) as ended:
            for reply in replies:
                answered.append(pb.StreamActReply.FromString(reply))
    assert [reply.status.code for reply in answered] == [0, 0]
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    until = time.monotonic() + 30  # the stream's session goes with it, once the server has ended the call
    while server.servicer.sessions.count() and time.monotonic() < until:
        time.sleep(0.01)
    assert server.servicer.sessions.count() == 0
