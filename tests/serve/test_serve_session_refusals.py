"""A ControlSession's two refusals of a call, another call running (SessionBusyError) and the session
closed (SessionClosedError), have types of their own: a node skips just those, and stops on the other
FlowRLErrors."""

from __future__ import annotations

import queue
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from flowrl_deploy import session_stream
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.session import SessionBusyError, SessionClosedError

OBS = np.array([0.3, -0.2, 0.1], np.float32)


def test_a_call_after_close_raises_session_closed_error(client):
    control = client.session(period_s=0.5, seed=0)
    control.close()
    for call in (lambda: control.act(OBS), lambda: control.reset(seed=0)):
        with pytest.raises(SessionClosedError, match=r"after close\(\)") as info:
            call()
        assert isinstance(info.value, FlowRLError)


def test_an_overlapping_act_or_reset_raises_session_busy_error_saying_what_to_do(client, monkeypatch):
    """A node skipping a refused overlapping tick could only tell it apart from a fatal FlowRLError by
    its message."""
    sent, replies = queue.SimpleQueue(), queue.SimpleQueue()
    stream = SimpleNamespace(requests=SimpleNamespace(put=sent.put), replies=replies, error=None, close=lambda: None)
    monkeypatch.setattr(session_stream, "StreamCall", lambda _client: stream)
    control = client.session(period_s=5.0, deadline_s=0.5)
    loop = threading.Thread(target=lambda: control.act(OBS))
    loop.start()
    sent.get(timeout=5)  # the loop's tick now waits for its reply
    try:
        with pytest.raises(SessionBusyError, match="MutuallyExclusiveCallbackGroup") as busy_act:
            control.act(OBS)
        with pytest.raises(SessionBusyError, match="queue the reset for the control loop") as busy_reset:
            control.reset(seed=1)
    finally:
        loop.join(timeout=5)  # its deadline
        control.close()
    assert isinstance(busy_act.value, FlowRLError) and isinstance(busy_reset.value, FlowRLError)
