"""ServerProcess reads the child's stderr from its start: it read none of it until the banner, so a
child that logged more than a pipe holds (64 KiB: gRPC's debug tracing, a checkpoint export's
warnings) blocked in its write, never printed the banner, and was reported as 'did not start: no
output' after START_TIMEOUT_S."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve import process

LOGGED = 200_000
"""Characters the stand-in child logs before its banner (or refusal): three pipes' worth."""


@pytest.fixture
def child(monkeypatch):
    """``child(script)`` makes ServerProcess start ``script`` (with START_TIMEOUT_S 10 s); the
    children are killed at the end, where the code under test left one running."""
    started: list[subprocess.Popen] = []
    popen = subprocess.Popen

    def record(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(process.subprocess, "Popen", record)
    monkeypatch.setattr(process, "START_TIMEOUT_S", 10.0)

    def use(script: str) -> None:
        monkeypatch.setattr(process, "FLOWRL", (sys.executable, "-c", script))

    yield use
    for started_child in started:
        started_child.kill()
        started_child.wait()


def test_a_child_that_logs_more_than_a_pipe_holds_before_its_banner_starts(child, tmp_path):
    child(
        f"import sys, time; sys.stderr.write('x' * {LOGGED} + '\\n'); sys.stderr.flush(); "
        "print('serving v1-ab12 (N=1 flow steps) on 127.0.0.1:5005', flush=True); time.sleep(60)"
    )
    start = time.monotonic()
    with process.ServerProcess("policy.onnx", log=tmp_path / "served.log") as server:
        assert server.address == "127.0.0.1:5005"
        assert time.monotonic() - start < 30  # not START_TIMEOUT_S (120 s), a hung pipe's; a loaded machine is slow
    assert (tmp_path / "served.log").read_text() == "x" * LOGGED + "\n"  # all of it, from the start


def test_a_child_that_logs_more_than_a_pipe_holds_then_is_refused_says_why(child):
    child(f"import sys; sys.stderr.write('x' * {LOGGED} + '\\nerror: model not found: /x/policy.onnx\\n'); sys.exit(1)")
    start = time.monotonic()
    with pytest.raises(FlowRLError, match=r"^flowrl serve policy.onnx did not start: model not found: /x/policy.onnx$"):
        process.ServerProcess("policy.onnx")
    assert time.monotonic() - start < 30  # not START_TIMEOUT_S (120 s)


def test_a_log_that_cannot_be_written_is_refused_naming_it_before_the_child_starts(child, tmp_path):
    """The drain thread opened the log: it died with a traceback, and a failed start read 'no output'."""
    child("import sys; sys.stderr.write('error: model not found: /x/policy.onnx\\n'); sys.exit(1)")
    log = tmp_path / "missing-folder" / "server.log"
    with pytest.raises(FlowRLError, match=r"^cannot write the server log .*server\.log: No such file or directory$"):
        process.ServerProcess("policy.onnx", log=log)


def test_a_child_that_fails_names_its_refusal_and_leaves_it_in_the_log(child, tmp_path):
    child("import sys; sys.stderr.write('error: model not found: /x/policy.onnx\\n'); sys.exit(1)")
    log = tmp_path / "server.log"
    with pytest.raises(FlowRLError, match=r"did not start: .*model not found: /x/policy\.onnx"):
        process.ServerProcess("policy.onnx", log=log)
    assert "model not found" in log.read_text()
