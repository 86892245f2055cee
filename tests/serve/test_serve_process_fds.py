"""ServerProcess closes its pipes from the child once it is stopped: each instance left two file
descriptors open (a ResourceWarning under -X dev), whether it started or failed to."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve import process


def children(monkeypatch, banner: str) -> list[subprocess.Popen]:
    """Make ServerProcess start a child that logs a line, prints ``banner`` and waits to be stopped;
    return the list its children's Popen objects are added to. The line is logged first: a test
    stops the child once it has the banner, which on a loaded machine was before the log line."""
    script = (
        f"import sys, time; print('log', file=sys.stderr, flush=True); print({banner!r}, flush=True); time.sleep(60)"
    )
    monkeypatch.setattr(process, "FLOWRL", (sys.executable, "-c", script))
    started: list[subprocess.Popen] = []
    real = subprocess.Popen

    def popen(*args, **kwargs) -> subprocess.Popen:
        started.append(real(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(process.subprocess, "Popen", popen)
    return started


def test_a_stopped_server_process_closes_its_pipes(monkeypatch, tmp_path):
    started = children(monkeypatch, "serving v1-ab12 (N=4 flow steps) on 127.0.0.1:5005")
    with process.ServerProcess("policy.onnx", log=tmp_path / "served.log") as server:
        assert server.address == "127.0.0.1:5005"
    process.ServerProcess("policy.onnx").stop()
    assert len(started) == 2
    assert all(child.stdout.closed and child.stderr.closed for child in started)
    assert (tmp_path / "served.log").read_text() == "log\n"


def test_a_server_process_that_fails_to_start_closes_its_pipes(monkeypatch):
    started = children(monkeypatch, "not a banner")
    with pytest.raises(FlowRLError, match="did not start"):
        process.ServerProcess("policy.onnx")
    assert len(started) == 1 and started[0].stdout.closed and started[0].stderr.closed
