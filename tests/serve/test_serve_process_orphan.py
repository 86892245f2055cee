"""A ServerProcess's parent killed with SIGKILL (the OOM killer, `timeout -s KILL flowrl demo`) could not stop its
`flowrl serve` child, which ran on for good, still listening. The child now stops gracefully once its parent is
gone."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from tiny_policy import write_policy

PARENT = """
import sys
from flowrl_deploy.serve.process import ServerProcess
server = ServerProcess(sys.argv[1])
print(server.process.pid, server.address, flush=True)
sys.stdin.read()  # until killed
"""


@pytest.mark.skipif(os.name == "nt", reason="Windows keeps a process's parent id when the parent ends")
def test_the_child_server_stops_once_its_parent_is_killed(tmp_path):
    policy = write_policy(tmp_path / "policy.onnx")
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(policy)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        pid, address = parent.stdout.readline().split()
        host, port = address.rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=5).close()  # serving
    finally:
        parent.kill()  # SIGKILL: no clean-up of its own
        parent.wait(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(int(pid)):
        time.sleep(0.1)
    if _alive(int(pid)):
        os.kill(int(pid), signal.SIGKILL)  # not left running after the test
        pytest.fail("the server outlived its killed parent")
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=5).close()  # nothing listens there any more


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, which no one reaps in a container without an init, has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
