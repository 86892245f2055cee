"""A StreamAct whose call ends (the robot gone, its keepalive failed) between the handler reading a
request and registering the session it opens leaves no session behind: gRPC ran the stream's end
callback on its own thread while the session was not yet in the stream's list, so it stayed for good,
owned by the dead stream (never evicted, never dropped as idle), and at --max-sessions refused robots."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
from call_context import CallContext
from tiny_policy import OBS_DIM, write_policy

from flowrl_deploy.codec import encode
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.serve import ServeConfig
from flowrl_deploy.serve.servicer import PolicyServicer


@pytest.fixture
def servicer(tmp_path):
    path = write_policy(tmp_path / "policy.onnx")
    served = PolicyServicer(ServeConfig(str(path), port=0, max_sessions=1, session_idle_s=0.01))
    served.slot.load()
    yield served
    served.close()


def _request(session_id: str) -> pb.StreamActRequest:
    return pb.StreamActRequest(session_id=session_id, seq=1, obs=encode(np.zeros(OBS_DIM, np.float32)))


def _stream_ended_while_opening(servicer: PolicyServicer, monkeypatch, session_id: str) -> list[pb.StreamActReply]:
    """Run one StreamAct request for ``session_id`` whose call ends while the handler opens its session
    (held in the contract check, the first step after the read)."""
    context = CallContext()
    read, ended = threading.Event(), threading.Event()
    check_contract = servicer._check_contract

    def held(*args, **kwargs):
        read.set()
        assert ended.wait(30)
        return check_contract(*args, **kwargs)

    monkeypatch.setattr(servicer, "_check_contract", held)
    replies: list[pb.StreamActReply] = []
    handler = threading.Thread(target=lambda: replies.extend(servicer.StreamAct(iter([_request(session_id)]), context)))
    handler.start()
    assert read.wait(30)
    context.end()  # gRPC's thread runs the call's end callbacks now
    ended.set()
    handler.join(30)
    assert not handler.is_alive()
    monkeypatch.setattr(servicer, "_check_contract", check_contract)
    return replies


def test_a_stream_ended_while_it_opens_its_session_leaves_none(servicer, monkeypatch):
    (reply,) = _stream_ended_while_opening(servicer, monkeypatch, "robot-1")
    assert reply.status.code == grpc.StatusCode.CANCELLED.value[0]
    assert servicer.sessions.count() == 0
    servicer.sessions.open_session("robot-2", 5)  # the only session's place is free (--max-sessions 1)
    assert servicer.sessions.count() == 1 and servicer.sessions.get("robot-2")


def test_a_stream_ended_while_it_joins_a_reset_session_leaves_it_droppable(servicer, monkeypatch):
    servicer.sessions.open_session("robot-1", 3)  # Reset: no stream owns it, dropped once idle
    _stream_ended_while_opening(servicer, monkeypatch, "robot-1")
    assert servicer.sessions.get("robot-1").owner is None
    threading.Event().wait(0.05)  # past --session-idle-s
    servicer.sessions.open_session("robot-2", 5)  # opening a session drops the idle ones first
    assert servicer.sessions.count() == 1 and servicer.sessions.get("robot-2")


def test_a_stream_whose_call_ended_before_its_handler_ran_opens_no_session(servicer):
    """gRPC refuses the end callback (add_callback is False) of a call that has ended already: the
    callback that would evict the session never runs."""
    (reply,) = servicer.StreamAct(iter([_request("robot-1")]), CallContext(ended=True))
    assert reply.status.code == grpc.StatusCode.CANCELLED.value[0]
    assert servicer.sessions.count() == 0
