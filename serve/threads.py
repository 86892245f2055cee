"""The server's call threads (a pool that survives a refused thread) and the task limits they must fit under."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve.config import ServeConfig
from flowrl_deploy.serve.interceptors import SPARE_THREADS

try:
    import resource  # POSIX only
except ImportError:  # Windows: no task limit to read
    resource = None  # type: ignore[assignment]


THREADS_REFUSED = (
    "cannot start the server's threads ({error}): a task limit (systemd TasksMax=, the cgroup's pids.max, "
    "ulimit -u) counts each thread, an address-space limit (ulimit -v, prlimit --as) each thread's stack "
    "(ulimit -s, 8 MiB by default), and the server runs up to --workers + "
    f"{SPARE_THREADS} call threads besides its own and onnxruntime's; raise or lift the limit, or lower --workers"
)


def cannot_start_threads(exc: BaseException) -> bool:
    """Whether ``exc`` is Python's refusal to start a thread (its stack could not be mapped)."""
    return isinstance(exc, RuntimeError) and str(exc).startswith("can't start new thread")


CGROUP_FILE = "/proc/self/cgroup"
CGROUP_MOUNTS = {"": ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"), "pids": ("/sys/fs/cgroup/pids",)}
"""Where each hierarchy of /proc/self/cgroup is mounted: cgroup v2 (its controllers field is empty),
at the root or, on a hybrid system, under unified/; cgroup v1's pids controller."""
PROC = "/proc"
TASK_MARGIN = 8
"""Threads counted on besides those :func:`threads_to_come` names: gRPC's core starts more under
load (its event engine's pool grows), and a stop starts two."""


def threads_to_come(config: ServeConfig) -> int:
    """The threads a server may still start once gRPC runs and the servicer's batcher threads have
    started: its call threads (one per call in flight, started as calls come, up to ``workers`` +
    :data:`SPARE_THREADS`), ``--watch``'s, the metrics endpoint's (one more per scrape in progress),
    onnxruntime's intra-op threads (``threads`` - 1 per model, two models during a reload) and
    :data:`TASK_MARGIN`."""
    return (
        config.workers
        + SPARE_THREADS
        + int(config.watch)
        + 2 * (config.metrics_port is not None)
        + 2 * (config.threads - 1)
        + TASK_MARGIN
    )


def _read_int(path: Path) -> int | None:
    """The number in ``path`` (None: missing, unreadable, or ``max``)."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def task_limits() -> list[tuple[int, str]]:
    """(how many more tasks may start, which limit says so) for each task limit on this process:
    the cgroup's ``pids.max`` (systemd's TasksMax=) at its cgroup and each one above (cgroup v2, or
    v1's pids controller), less its ``pids.current``; and ``RLIMIT_NPROC`` (ulimit -u, systemd's
    LimitNPROC=), less the tasks of this user's processes, unless this process is exempt (root,
    CAP_SYS_RESOURCE or CAP_SYS_ADMIN). Every thread is a task. A limit that cannot be read counts as none."""
    limits = []
    try:
        lines = Path(CGROUP_FILE).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "-", "")
        if controllers not in CGROUP_MOUNTS and "pids" not in controllers.split(","):
            continue
        for mount in CGROUP_MOUNTS["" if controllers == "" else "pids"]:
            folder = Path(mount + path.rstrip("/"))
            if not folder.is_dir():
                continue
            for level in (folder, *folder.parents):
                most, current = _read_int(level / "pids.max"), _read_int(level / "pids.current")
                if most is not None and current is not None:
                    where = "/" + str(level.relative_to(mount)).lstrip(".")
                    limits.append(
                        (
                            most - current,
                            f"the cgroup's pids.max (systemd TasksMax=) is {most} at {where}, {current} in use",
                        )
                    )
                if str(level) == mount:
                    break
            break
    nproc = _nproc_limit()
    if nproc is not None:
        used = _user_tasks(os.getuid())
        limits.append(
            (nproc - used, f"the user's ulimit -u (RLIMIT_NPROC, systemd LimitNPROC=) is {nproc}, {used} in use")
        )
    return limits


def _nproc_limit() -> int | None:
    if resource is None or not hasattr(resource, "RLIMIT_NPROC") or os.getuid() == 0:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft == resource.RLIM_INFINITY:
        return None
    try:  # the kernel does not apply it to a process with CAP_SYS_RESOURCE or CAP_SYS_ADMIN
        status = Path(PROC, "self", "status").read_text(encoding="utf-8", errors="replace")
        effective = int(re.search(r"^CapEff:\s*([0-9a-f]+)", status, re.M).group(1), 16)  # type: ignore[union-attr]
    except (OSError, AttributeError, ValueError):
        effective = 0
    return None if effective & (1 << 21 | 1 << 24) else soft


def _user_tasks(uid: int) -> int:
    """The threads of the processes (seen in /proc) whose real user is ``uid``: what RLIMIT_NPROC counts."""
    tasks = 0
    try:
        entries = [entry for entry in os.scandir(PROC) if entry.name.isdigit()]
    except OSError:
        return 0
    for entry in entries:
        try:
            # errors="replace": the file holds the process's name, which may be any bytes
            status = Path(entry.path, "status").read_text(encoding="utf-8", errors="replace")
        except OSError:  # gone, or hidden
            continue
        real = re.search(r"^Uid:\s*(\d+)", status, re.M)
        threads = re.search(r"^Threads:\s*(\d+)", status, re.M)
        if real and threads and int(real.group(1)) == uid:
            tasks += int(threads.group(1))
    return tasks


def check_task_limits(config: ServeConfig) -> None:
    """Refuse, in one line naming ``--workers`` and the limit, a server whose threads to come
    (:func:`threads_to_come`) do not fit under a task limit (:func:`task_limits`): past it, the
    call that needed one more thread would kill gRPC's serving thread (before :class:`CallThreads`)
    or leave the call waiting for a busy thread."""
    needed = threads_to_come(config)
    for room, limit in task_limits():
        if room < needed:
            workers = config.workers - (needed - room)
            lower = f"lower --workers to {workers} or less" if workers >= 1 else "lower --workers"
            raise FlowRLError(
                f"{limit}: only {max(room, 0)} more threads can start, and the server may need {needed} more "
                f"(--workers {config.workers} + {SPARE_THREADS} spare call threads + "
                f"{needed - config.workers - SPARE_THREADS} of its own); raise the limit, or {lower}"
            )


class CallThreads(futures.ThreadPoolExecutor):
    """gRPC's pool of call threads. A thread that cannot start (a task limit reached) raised from
    ``submit`` in gRPC's serving thread and killed it: the server answered nothing more while its
    process ran on. Here the call stays queued for a thread already running (``submit`` queues it
    first), gRPC serves on, and ``on_refused`` is told."""

    def __init__(self, max_workers: int, on_refused: Callable[[BaseException], None]) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix="flowrl-rpc")
        self._on_refused = on_refused

    def _adjust_thread_count(self) -> None:
        try:
            super()._adjust_thread_count()
        except RuntimeError as exc:
            if not cannot_start_threads(exc):
                raise
            self._on_refused(exc)
