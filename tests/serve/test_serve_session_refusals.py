"""A ControlSession closed refuses every call with a type of its own (SessionClosedError, a FlowRLError), as
it refuses a call while another runs (SessionBusyError: tests/core/test_session_threads.py), so that a node
can tell them from the other FlowRLErrors."""

from __future__ import annotations

import numpy as np
import pytest

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.session import SessionClosedError

OBS = np.array([0.3, -0.2, 0.1], np.float32)


def test_a_call_after_close_raises_session_closed_error(client):
    control = client.session(period_s=0.5, seed=0)
    control.close()
    for call in (lambda: control.act(OBS), lambda: control.reset(seed=0)):
        with pytest.raises(SessionClosedError, match=r"after close\(\)") as info:
            call()
        assert isinstance(info.value, FlowRLError)
