"""The client's keepalive: a session notices a server that vanished without closing its connection."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
from tiny_policy import write_policy

from flowrl_deploy.client import PolicyClient
from flowrl_deploy.serve.process import ServerProcess

OBS = np.array([0.3, -0.2, 0.1], np.float32)


def test_a_session_notices_a_server_that_stopped_answering_without_closing_the_connection(tmp_path):
    """A server host that lost power (here: a stopped process) sends no FIN: the session's ticks only
    missed their deadlines. Its pings (every 10 s, 5 s to answer) now end the stream: 'disconnected'
    within about 15 s; gRPC's own ping timeout took 60 s."""
    server = ServerProcess(write_policy(tmp_path / "policy.onnx"))
    try:
        client = PolicyClient(server.address)
        with client, client.session(period_s=0.02, deadline_s=0.02, fallback="zeros") as control:
            control.act(OBS)
            os.kill(server.process.pid, signal.SIGSTOP)
            reasons = []
            give_up = time.monotonic() + 45
            while "disconnected" not in reasons and time.monotonic() < give_up:
                time.sleep(0.5)  # a slow loop: the pings, not the ticks' deadlines, find the loss
                control.act(OBS)
                reasons.append(control.timings[-1].reason)
        # the ticks after the first unanswered one are not sent, as the frozen server holds it ("backlog")
        assert reasons[-1] == "disconnected" and set(reasons[:-1]) <= {"deadline", "backlog"}
    finally:
        os.kill(server.process.pid, signal.SIGKILL)  # a stopped process takes SIGKILL (not SIGTERM)
        server.stop(timeout_s=30)
