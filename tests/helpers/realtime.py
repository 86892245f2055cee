"""Real-time scheduling (``--rt-priority``) in tests: which policy a process's threads run under,
and whether this host lets a process use SCHED_FIFO at all."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

needs_scheduler = pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="scheduling policies are Linux-only")


@functools.cache
def realtime_permitted() -> bool:
    """Whether a process started here may run under SCHED_FIFO (root, CAP_SYS_NICE or ``ulimit -r``);
    a child tries, so that the test process keeps its own policy."""
    if not hasattr(os, "sched_setscheduler"):
        return False
    probe = "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def skip_unless_realtime_permitted() -> None:
    if not realtime_permitted():
        pytest.skip(f"this host refuses real-time scheduling (uid {os.geteuid()}; no CAP_SYS_NICE or rtprio limit)")


def thread_policies(pid: int | str = "self") -> dict[int, tuple[int, int]]:
    """Each live thread of process ``pid``: (its scheduling policy, its priority)."""
    policies = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            thread_id = int(task.name)
            policies[thread_id] = (os.sched_getscheduler(thread_id), os.sched_getparam(thread_id).sched_priority)
    return policies
