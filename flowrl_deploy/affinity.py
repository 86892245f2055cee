"""Pinning a process to CPU cores (``--cpus``), as robot computers do to keep a control path's
latency steady: the policy server on cores of its own, the control loop on others.

Linux keeps an affinity per thread: :func:`pin_to_cpus` sets it on every thread the process has
(numpy's BLAS pool starts at import), and threads started later (gRPC, onnxruntime) inherit it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
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
        try:
            low, _, high = part.partition("-")
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


def _cores(cpus: Iterable[int]) -> str:
    return ",".join(map(str, cpus))


def _no_core(cores: str, count: int) -> str:
    return f"no core {cores} on this machine (its cores are 0-{count - 1})"
