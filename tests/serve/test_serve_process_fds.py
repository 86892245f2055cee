"""ServerProcess closes its pipes from the child once it is stopped: each instance left two file
descriptors open (a ResourceWarning under -X dev), whether it started or failed to."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve import process

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd (Linux)")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def stand_in(monkeypatch, banner: str) -> None:
    """Make ServerProcess start a child that prints ``banner``, logs a line, and waits to be stopped."""
    script = (
        f"import sys, time; print({banner!r}, flush=True); print('log', file=sys.stderr, flush=True); time.sleep(60)"
    )
    monkeypatch.setattr(process, "FLOWRL", (sys.executable, "-c", script))


def test_a_stopped_server_process_leaves_no_file_descriptor_open(monkeypatch, tmp_path):
    stand_in(monkeypatch, "serving v1-ab12 (N=4 flow steps) on 127.0.0.1:5005")
    before = open_fds()
    kept = []  # referenced, so that no garbage collection closes their pipes instead
    for i in range(3):
        with process.ServerProcess("policy.onnx", log=tmp_path / f"{i}.log") as server:
            assert server.address == "127.0.0.1:5005"
        kept += [server, process.ServerProcess("policy.onnx")]
        kept[-1].stop()
    assert open_fds() == before
    assert (tmp_path / "0.log").read_text() == "log\n"


def test_a_server_process_that_fails_to_start_leaves_no_file_descriptor_open(monkeypatch):
    stand_in(monkeypatch, "not a banner")
    before = open_fds()
    kept = []  # their tracebacks hold the instances, so that no garbage collection closes the pipes instead
    for _ in range(3):
        with pytest.raises(FlowRLError, match="did not start") as refused:
            process.ServerProcess("policy.onnx")
        kept.append(refused)
    assert open_fds() == before
