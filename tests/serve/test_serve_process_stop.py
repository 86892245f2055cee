"""ServerProcess stops its child with the signal the child's server stops on gracefully: SIGTERM here; on
Windows, where terminate() is TerminateProcess (a kill: calls cut, no stop in the log), Ctrl-Break sent to
the child's own process group (SIGBREAK in the child)."""

from __future__ import annotations

import signal
import subprocess
import sys

from flowrl_deploy.serve import process

CHILD = """
import signal, sys, time
signal.signal({sig}, lambda *_: (print("stopped gracefully", file=sys.stderr, flush=True), sys.exit(0)))
print("serving v1-ab12 (N=4 flow steps) on 127.0.0.1:5005", flush=True)
time.sleep(60)
sys.exit(3)
"""


def test_the_child_is_stopped_with_the_platforms_graceful_signal(monkeypatch, tmp_path):
    assert getattr(signal, "CTRL_BREAK_EVENT", signal.SIGTERM) == process.STOP_SIGNAL
    monkeypatch.setattr(process, "STOP_SIGNAL", signal.SIGUSR1)  # any signal: the one the child handles
    monkeypatch.setattr(process, "FLOWRL", (sys.executable, "-c", CHILD.format(sig=int(signal.SIGUSR1))))
    flags = []
    popen = subprocess.Popen

    def record(*args, **kwargs):
        flags.append(kwargs.get("creationflags", 0))
        return popen(*args, **kwargs)

    monkeypatch.setattr(process.subprocess, "Popen", record)
    server = process.ServerProcess(tmp_path / "policy.onnx", log=tmp_path / "log")
    assert server.address == "127.0.0.1:5005"
    assert server.stop() == 0  # the handler ran: not killed
    assert (tmp_path / "log").read_text() == "stopped gracefully\n"
    assert flags == [getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)]
