"""Pinning a process to CPU cores (``--cpus``) and running it at a real-time priority
(:func:`set_realtime`), as robot computers do to keep a control path's latency steady: the policy
server on cores of its own, the control loop on others, neither waiting behind other work.

Linux keeps an affinity and a scheduling policy per thread: :func:`pin_to_cpus` and
:func:`set_realtime` set them on every thread the process has (numpy's BLAS pool starts at import),
and threads started later (gRPC, onnxruntime) and child processes inherit them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from flowrl_deploy.errors import FlowRLError


def parse_cpus(text: str) -> tuple[int, ...]:
    """'1', '2,3' or '0-3,6' → sorted core ids ('' → none: any core); a malformed list, or a core
    this machine lacks, is a :class:`FlowRLError` (checked before a range is expanded, so that
    '0-999999999' is refused rather than built)."""
    if not text.strip():
        return ()
    count = os.cpu_count() or 1
    cpus: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        low, dash, high = part.partition("-")
        if dash and not (low.strip() and high.strip()):  # '1-' (a truncated 1-3) was read as core 1
            raise FlowRLError(f"--cpus {text!r}: {part!r} lacks an end: a range needs both ends, such as 0-3")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise FlowRLError(f"--cpus {text!r}: use core ids such as 1, 2,3 or 0-3") from None
        if first < 0 or last < first:
            raise FlowRLError(f"--cpus {text!r}: {part!r} is not a core id or an ascending range")
        if last >= count:
            missing = str(last) if max(first, count) == last else f"{max(first, count)}-{last}"
            raise FlowRLError(f"--cpus {text!r}: {_no_core(missing, count)}")
        cpus.update(range(first, last + 1))
    return tuple(sorted(cpus))


def check_thread_count(flag: str, threads: int, per_core: int = 1) -> None:
    """Refuse a thread count beyond ``per_core`` threads per core of this machine: more only
    competes for the same cores, and a typo such as 100000 would start that many threads."""
    cores = os.cpu_count() or 1
    if threads > per_core * cores:
        per = f"{per_core} per core, " if per_core > 1 else ""
        raise FlowRLError(f"{flag} {threads} is more than this machine can run ({per}{cores} cores)")


def pin_to_cpus(cpus: tuple[int, ...]) -> None:
    """Restrict this process (its threads now and every thread it starts later) to ``cpus``."""
    if not cpus:
        return
    if not hasattr(os, "sched_setaffinity"):
        raise FlowRLError("--cpus needs Linux (os.sched_setaffinity); leave it out on this system")
    count = os.cpu_count() or 1
    missing = [c for c in cpus if c >= count]
    if missing:
        raise FlowRLError(f"--cpus {_cores(cpus)}: {_no_core(_cores(missing), count)}")
    tasks = Path("/proc/self/task")
    try:
        for thread_id in [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]:
            with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                os.sched_setaffinity(thread_id, cpus)
    except OSError as exc:  # e.g. the cores lie outside this container's cpuset
        raise FlowRLError(f"--cpus {_cores(cpus)}: this process may not run there ({exc.strerror})") from None


RT_PRIORITIES = (1, 99)
"""The SCHED_FIFO priorities Linux accepts. Robot stacks run control loops at 50-90 (ros2_control's
default is 50); the kernel's own interrupt threads run at 50."""


def check_rt_priority(flag: str, priority: object) -> int:
    """Refuse anything but an integer SCHED_FIFO priority in :data:`RT_PRIORITIES`, naming ``flag``."""
    low, high = RT_PRIORITIES
    if isinstance(priority, bool) or not isinstance(priority, int) or not low <= priority <= high:
        raise FlowRLError(f"{flag} must be an integer in {low}-{high} (a SCHED_FIFO priority), got {priority!r}")
    return priority


def check_realtime(priority: int, flag: str = "--rt-priority") -> None:
    """Refuse, as :func:`set_realtime` would, a ``priority`` this process may not run at, changing
    nothing: the calling thread tries it and goes back to its own policy. ``flowrl serve`` checks
    before it loads the model and applies the priority once the model is warm."""
    check_rt_priority(flag, priority)
    _need_scheduler(flag)
    before = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as exc:
        raise FlowRLError(_refusal(flag, priority, exc)) from None
    os.sched_setscheduler(0, *before)  # lowering one's own priority needs no right


def set_realtime(priority: int, flag: str = "--rt-priority") -> None:
    """Run every thread of this process (and those it starts later, and its child processes) under
    SCHED_FIFO at ``priority``: other work on their cores then no longer delays them.

    Under the default, fair scheduler a thread that wakes (a reply arriving, a tick's timer) waits
    behind the other processes' work on its core, a slice of up to a few milliseconds: on a busy
    2-core host that alone missed 1% of a 200 Hz loop's 2.5 ms deadlines, and none at SCHED_FIFO.
    A real-time thread that never sleeps starves its core (the kernel leaves other work 5% of each
    second): use it for processes that wait between ticks, as ``flowrl control`` and ``flowrl serve``
    do (onnxruntime's intra-op threads block rather than spin while they wait for work: the
    runtime turns spinning off).
    Needs Linux and the right to (root, CAP_SYS_NICE, or an rtprio limit of at least ``priority``,
    see ``ulimit -r``); without it this raises :class:`FlowRLError` naming ``flag``, having changed
    nothing. Errors name ``flag``."""
    check_rt_priority(flag, priority)
    _need_scheduler(flag)
    tasks = Path("/proc/self/task")
    changed: list[tuple[int, int, os.sched_param]] = []
    try:
        for thread_id in [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]:
            with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                before = os.sched_getscheduler(thread_id), os.sched_getparam(thread_id)
                os.sched_setscheduler(thread_id, os.SCHED_FIFO, os.sched_param(priority))
                changed.append((thread_id, *before))
    except OSError as exc:  # EPERM: no right to real-time scheduling
        for thread_id, policy, param in changed:  # all threads or none
            with contextlib.suppress(OSError):
                os.sched_setscheduler(thread_id, policy, param)
        raise FlowRLError(_refusal(flag, priority, exc)) from None


@contextlib.contextmanager
def normal_scheduling() -> Iterator[None]:
    """Run the calling thread (and the threads it starts meanwhile) under the default scheduler, then
    put its real-time policy back: a hot reload's export and load take seconds of CPU, which a
    SCHED_FIFO thread would hold its core for, ahead of the calls the other real-time threads serve.
    Nothing changes for a thread that is not real-time, or without scheduling policies (not Linux)."""
    if not hasattr(os, "sched_getscheduler") or os.sched_getscheduler(0) not in (os.SCHED_FIFO, os.SCHED_RR):
        yield
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))  # lowering needs no right
    try:
        yield
    finally:  # the right that set it lets it back (root, CAP_SYS_NICE or the rtprio limit); were it
        with contextlib.suppress(OSError):  # gone since (a lowered limit), the thread serves on at the default
            os.sched_setscheduler(0, policy, param)


def _need_scheduler(flag: str) -> None:
    if not hasattr(os, "sched_setscheduler"):
        raise FlowRLError(f"{flag} needs Linux (os.sched_setscheduler); leave it out on this system")


def _refusal(flag: str, priority: int, exc: OSError) -> str:
    return (
        f"{flag} {priority}: this process may not use real-time scheduling ({exc.strerror}); run it as root, "
        f"with CAP_SYS_NICE or under an rtprio limit of at least {priority} (ulimit -r), or leave {flag} out"
    )


def _cores(cpus: Iterable[int]) -> str:
    return ",".join(map(str, cpus))


def _no_core(cores: str, count: int) -> str:
    return f"no core {cores} on this machine (its cores are 0-{count - 1})"
