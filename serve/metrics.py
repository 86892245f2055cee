"""Request counts, errors, latency and batch-size figures: ``GetStats`` and Prometheus text.

Hand-written exposition (text format 0.0.4) keeps the base install free of extra packages; the HTTP
endpoint that serves it is :mod:`~flowrl_deploy.serve.metrics_http`'s.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
import platform
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from flowrl_deploy.codec import UNCOUNTED_REFUSALS
from flowrl_deploy.exposition import LATENCY_BUCKETS_S, Histogram, format_labels
from flowrl_deploy.moved import moved_names
from flowrl_deploy.serve.metrics_http import METRICS_CONNECTIONS, METRICS_PER_PEER

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

_PAGE_SIZE = resource.getpagesize() if resource is not None else 4096

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
RECENT = 10_000
"""Latencies kept per method for the percentiles of ``GetStats`` (its ``percentile_window``): the
latest this many, a span of time that shortens as the load grows (50 s of one robot at 200 Hz)."""
LIMIT_WARNING_S = 60.0
"""A limit that refuses calls warns at most this often (with the refusals since its last warning), and
so does each status of a refused Reload."""

log = logging.getLogger("flowrl.serve")


PROC_SELF = "/proc/self"
"""Where Linux tells this process's memory, threads, start and file descriptors (the ``process_*``
metrics); elsewhere those it cannot give are left out."""


def _stat_fields(proc: str) -> list[bytes]:
    """The fields of ``proc``/stat from the state on (field 3; the name before it may hold spaces)."""
    with open(os.path.join(proc, "stat"), "rb") as stat:
        return stat.read().rpartition(b")")[2].split()


@functools.cache
def _start_time(proc: str) -> float:
    """When the process started (Unix time): its start in clock ticks after boot, plus the boot time."""
    with open(os.path.join(os.path.dirname(proc), "stat"), "rb") as stat:
        boot = next(float(line.split()[1]) for line in stat if line.startswith(b"btime "))
    return boot + float(_stat_fields(proc)[19]) / os.sysconf("SC_CLK_TCK")


def process_lines() -> list[str]:
    """Prometheus' standard process metrics, named, typed and with the units its client libraries'
    process collectors give them: CPU time (everywhere), the soft limit of file descriptors (Unix),
    and from :data:`PROC_SELF` (Linux) memory, threads, start time and open file descriptors. One a
    platform cannot give is left out, never a failed scrape."""
    figures: list[tuple[str, str, str, float]] = []
    times = os.times()
    figures.append(
        ("cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", times[0] + times[1])
    )
    try:
        stat = _stat_fields(PROC_SELF)
        figures += [
            ("virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", int(stat[20])),
            ("resident_memory_bytes", "gauge", "Resident memory size in bytes.", int(stat[21]) * _PAGE_SIZE),
            ("threads", "gauge", "Number of OS threads in the process.", int(stat[17])),
        ]
        figures.append(
            (
                "start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                _start_time(PROC_SELF),
            )
        )
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    try:
        fds = len(os.listdir(os.path.join(PROC_SELF, "fd")))
        figures.append(("open_fds", "gauge", "Number of open file descriptors.", fds))
    except OSError:
        pass
    if resource is not None:
        most = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if most != resource.RLIM_INFINITY:
            figures.append(("max_fds", "gauge", "Maximum number of open file descriptors.", most))
    lines = []
    for name, kind, text, value in figures:
        lines += [f"# HELP process_{name} {text}", f"# TYPE process_{name} {kind}", f"process_{name} {value}"]
    return lines


@functools.cache
def build_labels() -> dict[str, str]:
    """``flowrl_build_info``'s labels: this flowrl-deploy's release (as GetSpec and GetStats report
    it), onnxruntime's version and Python's."""
    from flowrl_deploy.ort import import_onnxruntime
    from flowrl_deploy.versions import release

    try:
        onnxruntime = str(import_onnxruntime().__version__)
    except Exception:  # a label is no reason to fail a scrape
        onnxruntime = ""
    return {"version": release(), "onnxruntime": onnxruntime, "python": platform.python_version()}


class Metrics:
    """Thread-safe counters of one server."""

    def __init__(self, sessions: Callable[[], int], version: Callable[[], str]) -> None:
        self._lock = threading.Lock()
        self._sessions = sessions
        self._version = version
        self.started = time.monotonic()
        self.requests: dict[tuple[str, str], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.recent: dict[str, deque] = defaultdict(lambda: deque(maxlen=RECENT))
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.inference = Histogram(LATENCY_BUCKETS_S)
        self.batch_wait = Histogram(LATENCY_BUCKETS_S)
        self.batch_queue: Callable[[], int] | None = None
        """With ``--max-batch`` > 1, the requests waiting for their batch to run; the server sets it
        (None: no batcher queue, no ``flowrl_batch_queue_depth`` nor ``flowrl_batch_wait_seconds``)."""
        self.reloads = 0
        self.reload_failures = 0
        self.metrics_refused = 0  # connections to the metrics endpoint closed unanswered at its caps
        self.sessions_evicted = 0  # sessions forgotten to make room in a full table
        self.refused_at: dict[str, int] = defaultdict(int)  # by limit
        self._warned: dict[str, tuple[float, int]] = {}  # by kind of warning: its last, those held back since
        self.limits: Callable[[], dict[str, tuple[int, int]]] = dict
        """By limit (``workers``, ``sessions``, …): what is in use of it, and its most; the server sets it."""
        self.model_labels: Callable[[], dict[str, str] | None] = self._version_label
        """The served model's ``flowrl_model_info`` labels, None before one is loaded (no series then);
        the server sets it (by default: ``version`` alone)."""
        self.loaded_at: float | None = None
        """When the served model was swapped in (Unix time): set by :meth:`record_loaded` and
        :meth:`record_reload`."""
        self.serving: Callable[[], bool] | None = None
        """Whether health says SERVING (``flowrl_serving``); the server sets it (None: no series)."""
        self.tls: (
            Callable[[], tuple[int, int, datetime.datetime | None, dict[str, datetime.datetime | None]]] | None
        ) = None
        """With TLS: the changes of its files taken and refused since start, when the served
        certificate expires, and by file (``cert``, ``client_ca``) when the first of its certificates
        does; the server sets it."""

    def _version_label(self) -> dict[str, str] | None:
        version = self._version()
        return {"version": version} if version else None

    def record(self, method: str, code: str, seconds: float) -> None:
        with self._lock:
            self.requests[(method, code)] += 1
            self.latency.setdefault(method, Histogram(LATENCY_BUCKETS_S)).observe(seconds)
            self.recent[method].append(seconds)

    def record_untimed(self, method: str, code: str) -> None:
        """A call counted, not timed (a refused call, a health Watch, which lasts as long as its client likes)."""
        with self._lock:
            self.requests[(method, code)] += 1

    def record_limit(self, limit: str, why: str) -> None:
        """A call refused at ``limit``: counted, and warned of (``why`` names the limit and what raises
        it) at most once every :data:`LIMIT_WARNING_S` per limit, with the refusals since the last."""
        with self._lock:
            self.refused_at[limit] += 1
        if due := self._refusals_due(f"limit {limit}", "call"):
            count, during = due
            log.warning("refused %s at the %s limit%s: %s", count, limit, during, why)

    def record_metrics_refused(self, why: str) -> None:
        """A connection to the metrics endpoint closed unanswered at one of its caps: counted, and
        warned of (``why``: which cap) at most once every :data:`LIMIT_WARNING_S`, with the
        refusals since the last warning."""
        with self._lock:
            self.metrics_refused += 1
        if due := self._refusals_due("metrics connections", "connection"):
            log.warning("refused %s to the metrics endpoint%s: %s", *due, why)

    def record_session_evicted(self) -> str | None:
        """A session forgotten to make room in a full table: counted; the note its warning ends with, or
        None while warnings of it are held back (:meth:`held_back_note`)."""
        with self._lock:
            self.sessions_evicted += 1
        return self.held_back_note("session evicted")

    def held_back_note(self, kind: str) -> str | None:
        """:meth:`warning_due` for a warning that ends saying how many like it were held back: None while
        this one is held back, else '' or ' (3 more since the last warning)'."""
        due = self.warning_due(kind)
        if due is None:
            return None
        held, _ = due
        return f" ({held} more since the last warning)" if held else ""

    def _refusals_due(self, kind: str, noun: str) -> tuple[str, str] | None:
        """When a refusals warning of ``kind`` is due (:meth:`warning_due`), the count it tells of (this
        refusal and those held back, in ``noun``) and since when (empty for the first): ``("3 calls",
        " in the last 61 s")``; None while it is held back."""
        due = self.warning_due(kind)
        if due is None:
            return None
        held, age = due
        count = f"1 {noun}" if held == 0 else f"{held + 1} {noun}s"
        return count, "" if age is None else f" in the last {age:.0f} s"

    def warning_due(self, kind: str) -> tuple[int, float | None] | None:
        """Whether a warning of ``kind`` is due, at most one every :data:`LIMIT_WARNING_S` per kind (a
        caller that could repeat it without end must not flood the log): None when one was logged
        more recently (this one is held back, and counted), else how many were held back since the
        last one and the seconds since it (None: the first)."""
        now = time.monotonic()
        with self._lock:
            warned, held = self._warned.get(kind, (None, 0))
            if warned is not None and now - warned < LIMIT_WARNING_S:
                self._warned[kind] = (warned, held + 1)
                return None
            self._warned[kind] = (now, 0)
        return held, None if warned is None else now - warned

    def record_batch(self, size: int, inference_s: float) -> None:
        with self._lock:
            self.batch_size.observe(size)
            self.inference.observe(inference_s)

    def record_batch_wait(self, waits: list[float]) -> None:
        """How long each request of a batch waited in the batcher's queue (s)."""
        with self._lock:
            for seconds in waits:
                self.batch_wait.observe(seconds)

    def record_loaded(self) -> None:
        """The first model is served (a reload is :meth:`record_reload`)."""
        with self._lock:
            self.loaded_at = time.time()

    def record_reload(self) -> None:
        """Another model is served."""
        with self._lock:
            self.reloads += 1
            self.loaded_at = time.time()

    def record_reload_failure(self) -> None:
        """A reload refused or abandoned (``--watch`` or a Reload call): the old model kept serving."""
        with self._lock:
            self.reload_failures += 1

    def summary(self) -> dict:
        """Per-method counts (in all, not OK, and by status code) and p50/p99 (µs) of the latest
        :data:`RECENT` timed calls (``percentile_window``), batch figures, and each limit's
        use, most and refusals. The figures are copied under the lock that every request's
        :meth:`record` takes, and the percentiles computed after it is released: computed under it
        (1-3 ms), they delayed the replies of every call that ended meanwhile."""
        with self._lock:
            requests = dict(self.requests)
            recent = {method: list(samples) for method, samples in self.recent.items()}
            batches, batch_rows = self.batch_size.count, self.batch_size.total
            refused_at = dict(self.refused_at)
            reloads, reload_failures = self.reloads, self.reload_failures
        methods = {}
        for method in sorted({m for m, _ in requests} | set(recent)):
            samples = recent.get(method, ())
            total = sum(n for (m, _), n in requests.items() if m == method)
            codes = {c: n for (m, c), n in requests.items() if m == method}
            p50, p99 = np.percentile(np.asarray(samples) * 1e6, [50, 99]) if samples else (0.0, 0.0)
            methods[method] = {
                "requests": total,
                "errors": total - codes.get("OK", 0),
                "p50_us": p50,
                "p99_us": p99,
                "timed_calls": len(samples),
                "codes": codes,
            }
        limits = self.limits()
        return {
            "limits": {  # by limit: in use, most, refused
                limit: (*limits.get(limit, (0, 0)), refused_at.get(limit, 0))
                for limit in sorted({*limits, *refused_at})
            },
            "uptime_s": time.monotonic() - self.started,
            "methods": methods,
            "percentile_window": RECENT,
            "batches": batches,
            "mean_batch_size": batch_rows / batches if batches else 0.0,
            "reloads": reloads,
            "reload_failures": reload_failures,
        }

    def exposition(self) -> str:
        """All figures in the Prometheus text format."""
        limits = self.limits()  # before the lock that every request takes: it may read /proc
        with self._lock:
            lines = [
                "# HELP flowrl_requests_total Requests handled, by method and gRPC status code.",
                "# TYPE flowrl_requests_total counter",
            ]
            for (method, code), n in sorted(self.requests.items()):
                lines.append(f'flowrl_requests_total{{method="{method}",code="{code}"}} {n}')
            lines += [
                "# HELP flowrl_request_latency_seconds Server-side time per request.",
                "# TYPE flowrl_request_latency_seconds histogram",
            ]
            for method, hist in sorted(self.latency.items()):
                lines += hist.lines("flowrl_request_latency_seconds", f'method="{method}"')
            lines += [
                "# HELP flowrl_batch_size Observations per onnxruntime call.",
                "# TYPE flowrl_batch_size histogram",
                *self.batch_size.lines("flowrl_batch_size", ""),
                "# HELP flowrl_inference_seconds onnxruntime time per call.",
                "# TYPE flowrl_inference_seconds histogram",
                *self.inference.lines("flowrl_inference_seconds", ""),
            ]
            if self.batch_queue is not None:
                lines += [
                    "# HELP flowrl_batch_queue_depth Requests waiting for their batch to run (--max-batch > 1).",
                    "# TYPE flowrl_batch_queue_depth gauge",
                    f"flowrl_batch_queue_depth {self.batch_queue()}",
                    "# HELP flowrl_batch_wait_seconds Time from a request's arrival at the batcher to its batch's "
                    "run: the --batch-window-us wait, and any wait for a free batch worker.",
                    "# TYPE flowrl_batch_wait_seconds histogram",
                    *self.batch_wait.lines("flowrl_batch_wait_seconds", ""),
                ]
            lines += [
                "# HELP flowrl_sessions Open sessions.",
                "# TYPE flowrl_sessions gauge",
                f"flowrl_sessions {self._sessions()}",
            ]
            lines += [
                "# HELP flowrl_refused_total Calls refused at a limit, by limit (a StreamAct once, however "
                "many of its requests are refused).",
                "# TYPE flowrl_refused_total counter",
                *(
                    f'flowrl_refused_total{{limit="{limit}"}} {self.refused_at.get(limit, 0)}'
                    for limit in sorted({*limits, *self.refused_at} - UNCOUNTED_REFUSALS)
                ),
                "# HELP flowrl_in_use What is in use of each limit: calls in flight under a cap, open sessions, "
                "open client connections.",
                "# TYPE flowrl_in_use gauge",
                *(f'flowrl_in_use{{limit="{limit}"}} {used}' for limit, (used, _) in sorted(limits.items())),
                "# HELP flowrl_limit Each limit: the most calls in flight under a cap (--workers, …), --max-sessions, "
                "--max-connections.",
                "# TYPE flowrl_limit gauge",
                *(f'flowrl_limit{{limit="{limit}"}} {most}' for limit, (_, most) in sorted(limits.items())),
                "# HELP flowrl_sessions_evicted_total Sessions opened by Reset and no stream's, forgotten to make "
                "room in a full session table (--max-sessions) since start.",
                "# TYPE flowrl_sessions_evicted_total counter",
                f"flowrl_sessions_evicted_total {self.sessions_evicted}",
                "# HELP flowrl_reloads_total Models swapped in since start.",
                "# TYPE flowrl_reloads_total counter",
                f"flowrl_reloads_total {self.reloads}",
                "# HELP flowrl_reload_failures_total Reloads refused or abandoned since start (--watch and Reload); "
                "the old model kept serving.",
                "# TYPE flowrl_reload_failures_total counter",
                f"flowrl_reload_failures_total {self.reload_failures}",
                "# HELP flowrl_metrics_connections_refused_total Connections to this metrics endpoint closed "
                f"unanswered since start: {METRICS_CONNECTIONS} are served at once, {METRICS_PER_PEER} from "
                "one client address.",
                "# TYPE flowrl_metrics_connections_refused_total counter",
                f"flowrl_metrics_connections_refused_total {self.metrics_refused}",
            ]
            loaded_at = self.loaded_at
            if self.tls is not None:
                lines += _tls_lines(*self.tls())
        if self.serving is not None:
            lines += [
                "# HELP flowrl_serving 1 while health says SERVING; 0 while the model loads at start and once a "
                "stop has begun.",
                "# TYPE flowrl_serving gauge",
                f"flowrl_serving {int(self.serving())}",
            ]
        model = self.model_labels()
        if model is not None:
            lines += [
                "# HELP flowrl_model_info The served model: version (v<reloads here + 1>-<sha256 prefix>, this "
                "server's own), and what names its bytes alike on every server: sha256 (its first 12 hex digits), "
                "contract_hash, flow_steps and the onnxruntime providers it runs on.",
                "# TYPE flowrl_model_info gauge",
                f"flowrl_model_info{{{format_labels(model)}}} 1",
            ]
            if loaded_at is not None:
                lines += [
                    "# HELP flowrl_model_loaded_timestamp_seconds When the served model was swapped in (Unix time).",
                    "# TYPE flowrl_model_loaded_timestamp_seconds gauge",
                    f"flowrl_model_loaded_timestamp_seconds {loaded_at:.3f}",
                ]
        lines += [
            "# HELP flowrl_build_info This server's flowrl-deploy release, onnxruntime and Python versions.",
            "# TYPE flowrl_build_info gauge",
            f"flowrl_build_info{{{format_labels(build_labels())}}} 1",
            *process_lines(),  # read outside the lock
        ]
        return "\n".join(lines) + "\n"


def _tls_lines(
    rotations: int,
    refusals: int,
    expires: datetime.datetime | None,
    expiries: dict[str, datetime.datetime | None] | None = None,
) -> list[str]:
    lines = [
        "# HELP flowrl_tls_rotations_total Changes of --tls-cert, --tls-key or --client-ca taken into use since start.",
        "# TYPE flowrl_tls_rotations_total counter",
        f"flowrl_tls_rotations_total {rotations}",
        "# HELP flowrl_tls_refusals_total Changes of the TLS files refused since start (the files in use serve on).",
        "# TYPE flowrl_tls_refusals_total counter",
        f"flowrl_tls_refusals_total {refusals}",
    ]
    known = {name: date for name, date in (expiries or {}).items() if date is not None}
    if known:
        lines += [
            "# HELP flowrl_tls_certificate_expiry_timestamp_seconds When the first certificate of each TLS file "
            "expires (Unix time): file=cert, --tls-cert's chain (the served certificate and its intermediates), "
            "and file=client_ca, --client-ca's CAs.",
            "# TYPE flowrl_tls_certificate_expiry_timestamp_seconds gauge",
            *(
                f'flowrl_tls_certificate_expiry_timestamp_seconds{{file="{name}"}} {date.timestamp():.0f}'
                for name, date in sorted(known.items())
            ),
        ]
    if expires is not None:
        lines += [
            "# HELP flowrl_tls_certificate_expiry_seconds Deprecated, use "
            "flowrl_tls_certificate_expiry_timestamp_seconds (file cert): when the served certificate itself "
            "expires (Unix time).",
            "# TYPE flowrl_tls_certificate_expiry_seconds gauge",
            f"flowrl_tls_certificate_expiry_seconds {expires.timestamp():.0f}",
        ]
    return lines


if TYPE_CHECKING:  # the names that moved (MOVED), typed for old code; __getattr__ loads them
    from flowrl_deploy.serve.metrics_http import METRICS_TIMEOUT_S as METRICS_TIMEOUT_S
    from flowrl_deploy.serve.metrics_http import start_metrics_http as start_metrics_http

MOVED = dict.fromkeys(("start_metrics_http", "METRICS_TIMEOUT_S"), "flowrl_deploy.serve.metrics_http")
"""v0.1.0's HTTP endpoint of this module (274c062 moved it to its own)."""

if not TYPE_CHECKING:  # type checkers read the moved names from imports; a module __getattr__ would pass any typo
    __getattr__ = moved_names(__name__, MOVED)
