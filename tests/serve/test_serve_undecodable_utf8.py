"""A request with a string field that is not valid UTF-8 (what C++ protobuf sends, logging only an error,
for a std::string id built from raw bytes) cannot be parsed at all: the refusal, and the server's log
line, now say that this is one cause, naming one of the message's string fields (foreign review F10).
They said only that the bytes were no such message."""

from __future__ import annotations

import logging

import grpc
import numpy as np
import pytest
from tiny_policy import OBS_DIM

from flowrl_deploy.codec import encode
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb

NOT_UTF8 = b"\x0a\x02\xff\xfe"  # field 1 (StreamActRequest.session_id, HealthCheckRequest.service), not UTF-8
ACT_NOT_UTF8 = b"\x12\x02\xff\xfe"  # field 2, ActRequest.session_id
WHY = "(bytes of another message, or a string field such as {} that is not valid UTF-8)"


def _raw(channel: grpc.Channel, method: str, streaming: bool):
    raw = {"request_serializer": None, "response_deserializer": None}
    return (channel.stream_stream if streaming else channel.unary_unary)(method, **raw)


@pytest.mark.parametrize(
    ("method", "sent", "message", "field"),
    [
        ("/flowrl.v1.PolicyService/Act", ACT_NOT_UTF8, "ActRequest", "session_id"),
        ("/grpc.health.v1.Health/Check", NOT_UTF8, "HealthCheckRequest", "service"),
    ],
)
def test_a_unary_request_that_is_not_utf8_is_refused_saying_why(server, method, sent, message, field):
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as refused:
        _raw(channel, method, False)(sent, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == f"the request is not a valid {message} message {WHY.format(field)}"


def test_a_stream_ends_at_a_session_id_that_is_not_utf8_saying_why_to_the_client_and_in_the_log(
    tmp_path, policy_path, caplog
):
    from flowrl_deploy.serve import PolicyServer, ServeConfig

    good = pb.StreamActRequest(seq=1, obs=encode(np.zeros(OBS_DIM, np.float32))).SerializeToString()
    why = f"StreamActRequest message {WHY.format('session_id')}"
    server = PolicyServer(ServeConfig(str(policy_path), port=0, grace_s=0)).start()  # its own: one warning a minute
    with server, caplog.at_level(logging.WARNING), grpc.insecure_channel(server.address) as channel:
        replies = _raw(channel, "/flowrl.v1.PolicyService/StreamAct", True)(iter([good, NOT_UTF8 + good]), timeout=10)
        answered = []
        with pytest.raises(grpc.RpcError) as ended:
            for reply in replies:
                answered.append(pb.StreamActReply.FromString(reply).seq)
    assert answered == [1]
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ended.value.details() == f"the request is not a valid {why}"
    logged = [r.getMessage() for r in caplog.records if "its bytes are no" in r.getMessage()]
    assert len(logged) == 1 and logged[0].endswith(f": its bytes are no {why}"), logged


def test_a_message_without_string_fields_gives_only_the_other_cause(server):
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as refused:
        _raw(channel, "/flowrl.v1.PolicyService/GetStats", False)(b"\xff\xff\xff", timeout=10)
    assert refused.value.details() == "the request is not a valid GetStatsRequest message (bytes of another message)"
