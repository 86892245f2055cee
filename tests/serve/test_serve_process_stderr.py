"""ServerProcess reads the child's stderr from its start: it read none of it until the banner, so a
child that logged more than a pipe holds (64 KiB: gRPC's debug tracing, a checkpoint export's
warnings) blocked in its write, never printed the banner, and was reported as 'did not start: no
output' after START_TIMEOUT_S."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
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


@pytest.fixture
def thread_errors(monkeypatch):
    """The exceptions that ended a thread (the drain thread's, printed as 'Exception in thread …')."""
    raised: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: raised.append(args.exc_value))
    return raised


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a device whose writes fail: ENOSPC)")
def test_a_log_that_fills_up_stops_being_copied_but_the_stderr_is_still_read(child, thread_errors):
    """A failed log write (a full disk) ended the drain thread: the child, logging more than a pipe holds
    after that, blocked in its write (a server holding its logging lock: a hang)."""
    child(
        "import sys; print('serving v1-ab12 (N=1 flow steps) on 127.0.0.1:5005', flush=True); "
        f"[sys.stderr.write('x' * {LOGGED // 2} + '\\n') for _ in range(3)]; sys.stderr.write('last line\\n')"
    )
    with process.ServerProcess("policy.onnx", log="/dev/full") as server:
        assert server.process.wait(20) == 0  # it logged to the end; a blocked child times out here
    assert isinstance(server.log_error, OSError) and server.log_error.errno == errno.ENOSPC
    assert server._stderr_tail[-1] == "last line\n"  # still kept, for a refusal's message
    assert thread_errors == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a device whose writes fail: ENOSPC)")
def test_a_log_whose_last_flush_fails_is_recorded_without_a_thread_traceback(child, thread_errors):
    child(
        "import sys; sys.stderr.write('a short log line\\n'); "
        "print('serving v1-ab12 (N=1 flow steps) on 127.0.0.1:5005')"
    )
    with process.ServerProcess("policy.onnx", log="/dev/full") as server:
        server.process.wait(20)
    assert isinstance(server.log_error, OSError) and server.log_error.errno == errno.ENOSPC
    assert thread_errors == []
