"""`flowrl serve` whose stdout cannot take its `serving … on` line (a reader gone, `| head -0`, `| true`;
a full disk, `> /dev/full`) serves on and says so in one warning on stderr, which journald keeps: it
exited 1 after loading with nothing on stderr (a closed pipe) or in a traceback (a full disk)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from tiny_policy import OBS_DIM, write_policy

from flowrl_deploy.client import PolicyClient

ADDRESS = re.compile(r"health NOT_SERVING on (\S+) until")


def _closed_pipe():
    read, write = os.pipe()
    os.close(read)  # the reader went away before the server printed anything
    return write


def _full_disk():
    return os.open("/dev/full", os.O_WRONLY)


@pytest.mark.parametrize("stdout", [_closed_pipe, _full_disk], ids=["closed-pipe", "full-disk"])
def test_serve_goes_on_serving_when_stdout_cannot_be_written(tmp_path, stdout):
    if stdout is _full_disk and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    policy = write_policy(tmp_path / "policy.onnx")
    fd = stdout()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "flowrl_deploy.cli", "serve", str(policy), "--port", "0", "--grace-s", "0"],
            stdout=fd,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(fd)
    lines = []
    killer = threading.Timer(60, process.kill)  # a server that serves on without a word ends the read
    killer.start()
    try:
        for line in process.stderr:
            lines.append(line)
            if "standard output" in line or "Traceback" in line:
                break
        address = ADDRESS.search(lines[0])
        assert address, lines
        with PolicyClient(address[1], timeout_s=30) as client:  # still serving
            assert client.act(np.zeros(OBS_DIM, np.float32)).shape == (2,)
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=60)
    finally:
        killer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = "".join(lines) + rest
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    warnings = [line for line in stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, stderr
    assert re.search(
        r"cannot write the 'serving …' line to standard output \(.+\); serving on \S+ regardless$", warnings[0]
    )
