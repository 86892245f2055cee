"""A ControlSession takes calls from any thread, one at a time (a ROS 2 MultiThreadedExecutor runs each
timer callback on whichever pool thread is free); only overlapping calls are refused, and the refusal
says so."""

from __future__ import annotations

import queue
import threading
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from tiny_policy import write_policy

from flowrl_deploy import session_stream
from flowrl_deploy.client import PolicyClient, ServiceError
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.session import SessionBusyError

OBS = np.array([0.3, -0.2, 0.1], np.float32)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    path = write_policy(tmp_path_factory.mktemp("threads") / "policy.onnx")
    with (
        PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as server,
        PolicyClient(server.address) as connected,
    ):
        yield connected


def test_ticks_one_at_a_time_from_different_threads_are_served(client):
    with client.session(period_s=0.5, seed=0) as control:
        control.deadline_s = 10.0  # every tick served however loaded the machine: the threads are the subject
        for i in range(6):
            tick = threading.Thread(target=control.act, args=(OBS,), name=f"executor-{i}")
            tick.start()
            tick.join(timeout=5)  # each waits for the last: never two at once
        reset = threading.Thread(target=control.reset, kwargs={"seed": 1})
        reset.start()
        reset.join(timeout=5)
        assert control.seed == 1
        assert [t.source for t in control.timings] == ["server"] * 6


def test_an_overlapping_call_is_refused_saying_what_is_allowed(client, monkeypatch):
    sent, replies = queue.SimpleQueue(), queue.SimpleQueue()
    stream = SimpleNamespace(requests=SimpleNamespace(put=sent.put), replies=replies, error=None, close=lambda: None)
    monkeypatch.setattr(session_stream, "StreamCall", lambda _client: stream)
    # a 4.5 s deadline: its tick still waits when the next call comes however loaded the machine (0.5 s could
    # pass); the stream's end (below) then ends the tick, on its fallback
    control = client.session(period_s=5.0, deadline_s=4.5, fallback="zeros")
    loop = threading.Thread(target=lambda: control.act(OBS))
    loop.start()
    sent.get(timeout=5)  # the loop's tick now waits for its reply
    try:  # its own type (a FlowRLError), so that a node can skip just this refusal
        with pytest.raises(SessionBusyError) as info:
            control.act(OBS)
        with pytest.raises(SessionBusyError, match="queue the reset for the control loop"):
            control.reset(seed=1)
    finally:
        stream.error = ServiceError(grpc.StatusCode.UNAVAILABLE, "gone")  # the stream ends: the loop's tick,
        replies.put(session_stream._END)  # still waiting, falls back at once
        loop.join(timeout=10)
        control.close()
    assert isinstance(info.value, FlowRLError)
    message = str(info.value)
    assert "from any thread, one at a time" in message and "MutuallyExclusiveCallbackGroup" in message
