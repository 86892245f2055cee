"""--rt-priority: running a process's threads under SCHED_FIFO (Linux)."""

import errno
import os
import subprocess
import sys
import threading

import pytest
from realtime import needs_scheduler, skip_unless_realtime_permitted

from flowrl_deploy.affinity import check_realtime, check_rt_priority, set_realtime
from flowrl_deploy.errors import FlowRLError


@pytest.mark.parametrize("priority", [0, 100, -5, 1.5, True, "50", None])
def test_a_priority_outside_1_to_99_is_a_clear_error_naming_the_flag(priority):
    with pytest.raises(FlowRLError, match=r"--rt-priority must be an integer in 1-99 \(a SCHED_FIFO priority\)"):
        set_realtime(priority)


def test_errors_name_the_callers_flag():
    with pytest.raises(FlowRLError, match=r"^rt_priority must be"):
        set_realtime(0, flag="rt_priority")


@needs_scheduler
def test_every_thread_runs_real_time_those_before_and_those_started_after():
    script = (
        "import os, threading\n"
        "from flowrl_deploy.affinity import set_realtime\n"
        "seen, go = [], threading.Event()\n"
        "early = threading.Thread(target=lambda: (go.wait(), seen.append(os.sched_getscheduler(0)))); early.start()\n"
        "try:\n"
        "    set_realtime(7)\n"
        "except Exception as exc:\n"
        "    print('refused', exc); go.set(); raise SystemExit\n"
        "go.set(); early.join()\n"
        "late = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0))); late.start(); late.join()\n"
        "print(os.sched_getscheduler(0) == os.SCHED_FIFO, os.sched_getparam(0).sched_priority,"
        " [s == os.SCHED_FIFO for s in seen])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    if out.startswith("refused"):
        assert "may not use real-time scheduling" in out
        pytest.skip("this host refuses real-time scheduling")
    assert out.strip() == "True 7 [True, True]"


@needs_scheduler
def test_a_refusal_says_how_to_get_the_right_and_leaves_every_thread_as_it_was(monkeypatch):
    """EPERM on the second thread: the first one, already changed, is put back (all threads or none)."""
    go = threading.Event()
    other = threading.Thread(target=go.wait)
    other.start()
    calls = []

    def setscheduler(thread_id, policy, param):
        calls.append((thread_id, policy, param.sched_priority))
        if policy == os.SCHED_FIFO and len(calls) == 2:
            raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", setscheduler)
    try:
        with pytest.raises(FlowRLError) as info:
            set_realtime(50)
    finally:
        go.set()
        other.join()
    message = str(info.value)
    assert message.startswith(
        "--rt-priority 50: this process may not use real-time scheduling (Operation not permitted)"
    )
    assert "ulimit -r" in message and "\n" not in message
    first = calls[0][0]
    assert calls[-1] == (first, os.sched_getscheduler(first), os.sched_getparam(first).sched_priority)  # put back


@needs_scheduler
def test_the_check_refuses_as_set_realtime_would_and_changes_nothing(monkeypatch):
    before = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    with pytest.raises(FlowRLError, match=r"^--rt-priority must be an integer in 1-99"):
        check_realtime(0)
    calls = []

    def refuse(thread_id, policy, param):
        calls.append(policy)
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    with pytest.raises(FlowRLError) as info:
        check_realtime(50)
    assert str(info.value).startswith("--rt-priority 50: this process may not use real-time scheduling")
    assert calls == [os.SCHED_FIFO]
    monkeypatch.undo()
    assert (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) == before


def test_without_a_scheduler_api_the_refusal_is_one_line_naming_the_flag(monkeypatch):
    """macOS and Windows have no os.sched_setscheduler."""
    monkeypatch.delattr(os, "sched_setscheduler", raising=False)
    for apply in (set_realtime, check_realtime):
        with pytest.raises(FlowRLError, match=r"^--rt-priority needs Linux \(os.sched_setscheduler\); leave it out"):
            apply(50)


NORMAL_SCHEDULING = """
import os, sys, threading
from flowrl_deploy.affinity import normal_scheduling, set_realtime
set_realtime(7)
seen = {}
with normal_scheduling():
    seen["inside"] = os.sched_getscheduler(0)
    started = threading.Thread(target=lambda: seen.update(started=os.sched_getscheduler(0)))
    started.start(); started.join()
seen["after"] = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)
print(seen["inside"] == os.SCHED_OTHER, seen["started"] == os.SCHED_OTHER, seen["after"] == (os.SCHED_FIFO, 7))
"""


@needs_scheduler
def test_normal_scheduling_lowers_the_thread_and_those_it_starts_then_puts_real_time_back():
    skip_unless_realtime_permitted()
    result = subprocess.run([sys.executable, "-c", NORMAL_SCHEDULING], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["True", "True", "True"], result.stderr


@pytest.mark.parametrize("priority", [1, 99])
def test_the_ends_of_1_to_99_are_priorities(priority):
    assert check_rt_priority("--rt-priority", priority) == priority


CHECK_AND_RR = """
import os
from flowrl_deploy.affinity import check_realtime, normal_scheduling
def policy():
    return os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
before = policy()
check_realtime(7)
print(policy() == before)
os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(5))
check_realtime(7)
print(policy() == (os.SCHED_RR, 5))
with normal_scheduling():
    print(policy() == (os.SCHED_OTHER, 0))
print(policy() == (os.SCHED_RR, 5))
"""


@needs_scheduler
def test_a_permitted_check_and_normal_scheduling_leave_the_caller_at_its_own_policy():
    """check_realtime tries the priority on the calling thread: left at SCHED_FIFO, `flowrl serve
    --rt-priority` loaded and warmed the model real-time, and the threads it started inherited it.
    normal_scheduling lowers a SCHED_RR thread as a SCHED_FIFO one, and puts it back."""
    skip_unless_realtime_permitted()
    result = subprocess.run([sys.executable, "-c", CHECK_AND_RR], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["True"] * 4, result.stderr
