"""A robot's control-loop figures for Prometheus, without opening a port: node_exporter's textfile
collector (``--collector.textfile.directory DIR``) reads ``DIR/*.prom``, a file that
:class:`ControlTextfile` rewrites every few seconds (a temporary file in the same folder, synced,
renamed onto it: node_exporter reads the old file or the new one, never half of one).

:func:`exposition` renders a :class:`~flowrl_deploy.session.ControlSession` in the text format
(``flowrl_control_*``, seconds):

- ``flowrl_control_ticks_total`` (counter): ticks since the session opened;
- ``flowrl_control_fallback_ticks_total{reason}`` (counter): ticks that acted on the fallback, by
  ``CallTiming.reason`` (``deadline``, ``disconnected``, the server's refusal code such as
  ``RESOURCE_EXHAUSTED``, or ``closed``: a tick waiting when another thread closed the session);
  ``deadline`` and ``disconnected`` are written from the start, at 0, so
  that ``rate()`` and ``increase()`` see their first misses;
- ``flowrl_control_consecutive_misses`` (gauge): fallback ticks in a row now (the watchdog's count);
- ``flowrl_control_fresh_action_age_seconds`` (gauge): seconds since the latest fresh action, as of
  the write, and ``flowrl_control_fresh_action_timestamp_seconds`` (gauge), when it came (Unix
  time); both left out until the first fresh action. Alert on the timestamp,
  ``time() - flowrl_control_fresh_action_timestamp_seconds > 5 and on(instance)
  flowrl_control_running == 1`` (the file stays after a run ends): it goes on ageing when the
  process hangs or dies and the file stops changing, where the age is frozen at its last write;
- ``flowrl_control_round_trip_seconds`` (histogram): each fresh tick's round trip (send to reply);
  fallback ticks are counted above instead, not timed here;
- ``flowrl_control_period_seconds`` and ``flowrl_control_deadline_seconds`` (gauges): the session's;
- ``flowrl_control_running`` (gauge): 1 while the loop runs, 0 in the file written as it ends;
- ``flowrl_control_textfile_write_failures_total`` (counter): earlier writes of this file that failed;
- ``flowrl_control_session_info{session_id,model_version,fallback}`` (gauge, 1): the latest fresh
  action's model version (the served one at the start, until then).

The round trip is a **histogram**, not a summary with quantiles: a summary's quantiles cannot be
aggregated (the p99 of a fleet is no function of each robot's p99), while ``histogram_quantile(0.99,
sum by (le) (rate(flowrl_control_round_trip_seconds_bucket[5m])))`` gives the fleet's, or one
robot's, over any window the query picks; and its edges are the server's own latency edges
(:data:`~flowrl_deploy.exposition.LATENCY_BUCKETS_S`, with 2.5 ms, a 200 Hz loop's budget, among
them), so the robot's round trips compare with ``flowrl_request_latency_seconds`` edge for edge. It
costs the tick one bisect into 19 edges (well under a microsecond).

The control tick does not write: :class:`ControlTextfile` renders and writes from a thread of its
own. Rendering reads the session without a lock (integers, and C-level copies of its dict and
bucket list under the GIL, which the tick's thread cannot interleave with); the write, fsync and
rename release the GIL. Measured on the development VM (2 shared cores, ext4): one render holds the
GIL for 15-45 µs (best of repeats / mean), and one whole write (render, temporary file, fsync,
rename) takes 0.45-0.65 ms, every 5 s by default; a slow disk lengthens the write, not the tick. A
200 Hz loop of 1000 ticks with the writer at 0.05 s showed no difference from one without it beyond
that machine's noise (p50 0.57-0.68 ms either way).
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from flowrl_deploy.affinity import normal_scheduling
from flowrl_deploy.atomic import write_text_atomic
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.exposition import format_labels

if TYPE_CHECKING:
    from flowrl_deploy.session import ControlSession

log = logging.getLogger("flowrl.client")
PREFIX = "flowrl_control_"
DEFAULT_INTERVAL_S = 5.0
"""How often :class:`ControlTextfile` rewrites its file by default: node_exporter is scraped every
15 s or so, and each write fsyncs (a robot's flash need not take more)."""
MIN_INTERVAL_S, MAX_INTERVAL_S = 0.1, 3600.0
"""The range of a write interval (``flowrl control --metrics-interval``)."""
FINAL_WRITE_TIMEOUT_S = 5.0
"""How long :meth:`ControlTextfile.close` waits for the last write: a hung file system (an NFS server
gone) must not keep the robot's process from exiting."""
ALWAYS_WRITTEN_REASONS = ("deadline", "disconnected")
"""Fallback reasons written at 0 before their first tick (a counter that appears at 1 hides that first
increase from ``rate()``); a server's refusal codes appear when they first happen."""


def exposition(session: ControlSession, *, running: bool = True, write_failures: int = 0) -> str:
    """``session``'s figures in the Prometheus text format (see the module's documentation), as of
    now; safe to call from another thread while the control loop ticks."""
    health = session.health
    ticks = health.ticks
    fallbacks = dict(health.fallbacks)  # one C-level copy: the tick's thread cannot add a reason meanwhile
    consecutive = health.consecutive_misses
    fresh_at = health.fresh_at
    model_version = health.model_version
    round_trips = health.round_trips.copy()
    now_monotonic, now_unix = time.monotonic(), time.time()

    lines: list[str] = []

    def metric(name: str, kind: str, text: str, *samples: str) -> None:
        lines.extend((f"# HELP {PREFIX}{name} {text}", f"# TYPE {PREFIX}{name} {kind}", *samples))

    info = {"session_id": session.session_id, "model_version": model_version, "fallback": session.fallback}
    metric(
        "session_info",
        "gauge",
        "The control session: its id, the model version of its latest fresh action and its fallback.",
        f"{PREFIX}session_info{{{format_labels(info)}}} 1",
    )
    metric("running", "gauge", "1 while the control loop runs, 0 once it has ended.", f"{PREFIX}running {int(running)}")
    metric("ticks_total", "counter", "Control ticks since the session opened.", f"{PREFIX}ticks_total {ticks}")
    for reason in ALWAYS_WRITTEN_REASONS:
        fallbacks.setdefault(reason, 0)
    metric(
        "fallback_ticks_total",
        "counter",
        "Ticks that acted on the fallback, by reason: deadline (no reply in time), disconnected (no open "
        "stream), the server's refusal code, or closed (the session closed while the tick waited).",
        *(
            f"{PREFIX}fallback_ticks_total{{{format_labels({'reason': reason})}}} {count}"
            for reason, count in sorted(fallbacks.items())
        ),
    )
    metric(
        "consecutive_misses",
        "gauge",
        "Fallback ticks in a row, the watchdog's count.",
        f"{PREFIX}consecutive_misses {consecutive}",
    )
    if fresh_at is not None:
        age = max(now_monotonic - fresh_at, 0.0)
        metric(
            "fresh_action_age_seconds",
            "gauge",
            "Seconds since the latest fresh action, as of this file's write.",
            f"{PREFIX}fresh_action_age_seconds {age:.6f}",
        )
        metric(
            "fresh_action_timestamp_seconds",
            "gauge",
            "When the latest fresh action came (Unix time).",
            f"{PREFIX}fresh_action_timestamp_seconds {now_unix - age:.6f}",
        )
    metric(
        "round_trip_seconds",
        "histogram",
        "Round trip of each fresh tick, from sending the observation to its action's arrival.",
        *round_trips.lines(f"{PREFIX}round_trip_seconds", ""),
    )
    metric("period_seconds", "gauge", "The control period.", f"{PREFIX}period_seconds {session.period_s!r}")
    metric(
        "deadline_seconds",
        "gauge",
        "How long a tick waits for its action before it falls back.",
        f"{PREFIX}deadline_seconds {session.deadline_s!r}",
    )
    metric(
        "textfile_write_failures_total",
        "counter",
        "Writes of this file that failed before this one.",
        f"{PREFIX}textfile_write_failures_total {write_failures}",
    )
    return "\n".join(lines) + "\n"


def _failure_kind(exc: BaseException) -> str:
    """What kind of failure ``exc`` is, for warning once per kind: the errno's name of an OSError (also
    one behind :func:`~flowrl_deploy.atomic.write_atomic`'s FlowRLError), else the exception's type."""
    cause = exc if isinstance(exc, OSError) else exc.__context__
    if isinstance(cause, OSError) and cause.errno:
        return errno.errorcode.get(cause.errno, str(cause.errno))
    return type(exc).__name__


class ControlTextfile:
    """Rewrite ``path`` with a session's :func:`exposition` every ``interval_s`` seconds, from a daemon
    thread, and once more (``flowrl_control_running 0``) at :meth:`close`.

    A write that fails (a full disk, a folder gone read-only, an error in rendering) never reaches the
    control loop: it is counted (``flowrl_control_textfile_write_failures_total`` in the next file
    written) and logged as a warning once per kind of failure (its errno), not once per write; the
    old file stays whole. Use::

        textfile = ControlTextfile("/var/lib/node_exporter/textfile/robot.prom")
        textfile.watch(session)  # the first write now, then every interval_s
        ...
        textfile.close()  # the last write
    """

    def __init__(self, path: str | Path, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.path = Path(path)
        self.interval_s = float(interval_s)
        self.failures = 0
        self._warned: set[str] = set()
        self._session: ControlSession | None = None
        self._running = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, session: ControlSession) -> None:
        """Write ``session``'s figures at once, then every ``interval_s``, from a daemon thread until
        :meth:`close`: even the first write is the thread's, so a slow or hung file system never
        delays the loop's first tick. One session per file: a second call, or one after
        :meth:`close`, raises :class:`FlowRLError` (make another ControlTextfile)."""
        if self._thread is not None:
            raise FlowRLError(
                f"this ControlTextfile already writes a session's figures to {self.path}: one ControlTextfile "
                "watches one session; give another session its own ControlTextfile (and file)"
            )
        if self._stop.is_set():
            raise FlowRLError(f"ControlTextfile.watch after close(): make a new ControlTextfile for {self.path}")
        self._session = session
        self._thread = threading.Thread(target=self._run, name="flowrl-metrics-textfile", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Under --rt-priority the thread would inherit SCHED_FIFO: a file write is no reason to hold a core
        # ahead of the control loop and its gRPC threads.
        with normal_scheduling():
            self.write()
            while not self._stop.wait(self.interval_s):
                self.write()
            self.write()  # the last: running 0

    def write(self) -> bool:
        """Write the file now; False (and a warning the first time of each kind) when that failed."""
        session = self._session
        if session is None:
            return False
        try:
            text = exposition(session, running=self._running, write_failures=self.failures)
            write_text_atomic(self.path, text)
        except Exception as exc:  # never into the control loop, never a dead thread
            self.failures += 1
            kind = _failure_kind(exc)
            if kind not in self._warned:
                self._warned.add(kind)
                log.warning(
                    "the control metrics file was not written (%s); the control loop goes on, and further %s "
                    "failures of this file are not logged",
                    exc,
                    kind,
                )
            return False
        return True

    def close(self) -> None:
        """Stop the periodic writes and write the file once more, with ``flowrl_control_running 0``;
        waits for that write at most :data:`FINAL_WRITE_TIMEOUT_S` (then warns and leaves it)."""
        thread = self._thread
        if thread is None:
            return
        self._thread = None
        self._running = False
        self._stop.set()
        thread.join(FINAL_WRITE_TIMEOUT_S)
        if thread.is_alive():
            log.warning(
                "the last write of the control metrics file %s did not end within %g s; not waiting for it",
                self.path,
                FINAL_WRITE_TIMEOUT_S,
            )

    def __enter__(self) -> ControlTextfile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
