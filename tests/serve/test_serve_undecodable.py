"""A request whose bytes do not parse as its message: gRPC logged an ERROR with a five-line traceback
per call and answered INTERNAL, counted nowhere, and health's Check needs no token, so anyone reaching
the port could fill a robot's disk (500 calls: 3000 lines). It is now INVALID_ARGUMENT, counted, and
warned of at most once a minute."""

from __future__ import annotations

import logging

import grpc
import pytest
from tiny_policy import write_policy

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
    assert error.details().startswith("the request is not a valid ") and error.details().endswith(" message")
    assert server.servicer.metrics.requests[(name, "INVALID_ARGUMENT")] == before + 1


def test_a_flood_of_undecodable_requests_logs_one_line_and_the_server_serves_on(server, caplog):
    with caplog.at_level(logging.DEBUG), grpc.insecure_channel(server.address) as channel:
        for _ in range(50):
            _call(channel, "/grpc.health.v1.Health/Check", streaming=False)
        check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None)
        assert check(b"", timeout=10) is not None  # an empty HealthCheckRequest: served
    assert not [r for r in caplog.records if r.name.startswith("grpc")], [r.getMessage() for r in caplog.records]
    assert len([r for r in caplog.records if "its bytes are no" in r.getMessage()]) <= 1
