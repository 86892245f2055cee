"""A server that cannot start its threads (an address-space limit, ``ulimit -v`` or ``prlimit --as``,
counts each thread's stack) is refused in one line naming the limit: it raised 'can't start new
thread' from gRPC's start, then again from the stop that cleaned up after it, two chained tracebacks."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest
from tiny_policy import write_policy

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve import PolicyServer, ServeConfig


def _refuse_threads(self: threading.Thread) -> None:
    raise RuntimeError("can't start new thread")


def test_a_server_whose_threads_cannot_start_is_refused_in_one_line(tmp_path, monkeypatch):
    running = set(threading.enumerate())
    # max_batch > 1: the batcher's threads start with the server, for the refusal to stop
    server = PolicyServer(ServeConfig(str(write_policy(tmp_path / "policy.onnx")), port=0, grace_s=0, max_batch=4))
    assert _batchers(running)
    with monkeypatch.context() as patched:
        patched.setattr(threading.Thread, "start", _refuse_threads)
        with pytest.raises(FlowRLError, match="cannot start the server's threads") as refused:
            server.start()
    message = str(refused.value)
    assert "ulimit -v" in message and "--workers" in message
    assert refused.value.__cause__ is None and refused.value.__suppress_context__  # no chained traceback
    assert server.port  # start() binds before it starts a thread (the batcher's started with the server)
    assert _bindable(server.port, within_s=10)  # the stop that followed released it
    assert not _batchers(running)  # and stopped the server's threads, for a caller going on


def _batchers(running: set[threading.Thread]) -> list[str]:
    """The batcher threads started since ``running`` was taken, still alive."""
    return [thread.name for thread in set(threading.enumerate()) - running if thread.name.startswith("flowrl-batcher")]


def _bindable(port: int, within_s: float) -> bool:
    """Whether ``port`` can be bound within ``within_s``: gRPC closes a listener from its poller
    thread, a moment after its stop returns (measured: up to 0.05 s after a test's abandoned calls)."""
    until = time.monotonic() + within_s
    while True:
        try:
            with socket.socket() as again:
                again.bind(("127.0.0.1", port))
            return True
        except OSError:
            if time.monotonic() > until:
                return False
            time.sleep(0.02)


SCRIPT = """
import sys, threading
import grpc._server
start = threading.Thread.start
def refuse(self):  # gRPC's serving thread, as under an address-space limit
    if getattr(self, "_target", None) is grpc._server._serve:
        raise RuntimeError("can't start new thread")
    return start(self)
threading.Thread.start = refuse
from flowrl_deploy.cli import app
sys.argv[0] = "flowrl"
app()
"""


def test_flowrl_serve_says_so_in_one_line(tmp_path):
    policy = write_policy(tmp_path / "policy.onnx")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, "serve", str(policy), "--port", "0"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot start the server's threads" in errors[0], result.stderr
