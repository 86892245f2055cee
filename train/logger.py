"""Where training writes its numbers: TensorBoard scalars, metrics.jsonl and metrics.csv, and a live
progress line.

Scalar names are namespaced like CleanRL's: ``losses/…`` for the latest value of each of FlowRL's
losses (the actor's from its last step, which comes every ``policy_delay``-th update), ``charts/…``
for returns, episode lengths, terminations (1.0 when the task ended an episode, a fall in
HumanoidBench; 0.0 at the time limit) and rates (``env_steps_per_s``, ``updates_per_s``: over the
training since the previous row, evaluations left out; the progress line shows the run's average).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from flowrl_deploy.atomic import write_text_atomic
from flowrl_deploy.checkpoint import METRICS_CSV, METRICS_JSONL, TENSORBOARD_DIR
from flowrl_deploy.errors import FlowRLError

EPISODE_RETURN = "charts/episode_return"
"""The key of a training episode's row (one per episode, logged at the env step it ended)."""
EPISODE_UNSTABLE = "charts/episode_unstable"
"""1.0 in the row of an episode that an unstable simulation cut short."""
CSV_COLUMNS = (
    "step",
    EPISODE_RETURN,
    "charts/episode_length",
    "charts/episode_terminated",
    EPISODE_UNSTABLE,
    "charts/eval_return",
    "charts/eval_return_std",
    "charts/eval_episode_length",
    "charts/eval_terminated",
    "charts/eval_unstable",
    "charts/eval_return_deterministic",
    "charts/env_steps_per_s",
    "charts/updates_per_s",
    "losses/q_pi_loss",
    "losses/q_beta_loss",
    "losses/value_loss",
    "losses/actor_loss",
    "losses/flow_matching_loss",
    "losses/flow_weight",
    "losses/q_pi",
)
"""metrics.csv's columns: every key the loop (``charts/…``) and FlowRL's update (``losses/…``) log;
a key missing here would be dropped from the CSV (tests/train/test_train_loop.py checks they agree)."""


class MetricsLogger:
    """Writes every logged row to TensorBoard, ``metrics.jsonl`` (all keys) and ``metrics.csv``
    (the fixed :data:`CSV_COLUMNS`; empty where a row lacks one).

    A new run (``resume_step`` None) starts both files and TensorBoard afresh (older event files
    removed), so the leftovers of a run that crashed before its first checkpoint do not mix in. A
    resumed run keeps the rows up to its checkpoint's ``resume_step`` and drops the later ones, which
    its steps are about to redo (from metrics.jsonl, or from metrics.csv, with its columns alone, when
    the JSONL was deleted); in TensorBoard, which keeps the old event file, a purge from
    ``resume_step + 1`` in the new one hides them. With ``resume_episodes`` (the checkpoint's episode count)
    it drops too the rows of episodes past that count: an episode that an unstable simulation cut short right
    after the checkpoint's save is logged at the checkpoint's own step (its failed step stored nothing), and
    the resumed run does not redo it. TensorBoard keeps such a row (a purge goes by step alone).

    A file that cannot be written is a :class:`MetricsError` naming it, at once or at the row that fails.
    """

    def __init__(
        self,
        run_dir: str | Path,
        tensorboard: bool = True,
        resume_step: int | None = None,
        resume_episodes: int | None = None,
    ) -> None:
        run_dir = Path(run_dir)
        self._jsonl_path, self._csv_path = run_dir / METRICS_JSONL, run_dir / METRICS_CSV
        self._tb_path = run_dir / TENSORBOARD_DIR
        kept = [] if resume_step is None else _rows_up_to(self._jsonl_path, self._csv_path, resume_step)
        if resume_episodes is not None:
            kept = _without_uncounted_episodes(kept, resume_episodes, resume_step)
        for path, text in ((self._jsonl_path, _jsonl_text(kept)), (self._csv_path, _csv_text(kept))):
            write_text_atomic(path, text)  # a crash here leaves the old file or the new one
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            with _naming(self._tb_path):
                if resume_step is None:
                    for old in self._tb_path.glob("events.out.tfevents.*"):
                        old.unlink()
                purge_step = None if resume_step is None else resume_step + 1
                before = set(threading.enumerate())
                self._tb = SummaryWriter(str(self._tb_path), purge_step=purge_step)
                _quiet(set(threading.enumerate()) - before)
        self._jsonl = self._csv_file = -1
        with _naming(self._jsonl_path):
            self._jsonl = _open_append(self._jsonl_path)
        with _naming(self._csv_path):
            self._csv_file = _open_append(self._csv_path)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """Append the row to metrics.jsonl, then to metrics.csv, each whole or not at all: a write that fails
        (a full disk, cut short) is taken back, and so is the JSONL row where the CSV one fails, so that
        neither file holds a torn line nor a row the other lacks."""
        row = {"step": step, **scalars}
        with _naming(self._jsonl_path):
            jsonl_row, csv_row = _jsonl_text([row]).encode(), _csv_text([row], header=False).encode()
            jsonl_end = _append(self._jsonl, jsonl_row)
        try:
            with _naming(self._csv_path):
                _append(self._csv_file, csv_row)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(self._jsonl, jsonl_end)
            raise
        if self._tb is not None:
            with _naming(self._tb_path):
                for key, value in scalars.items():
                    self._tb.add_scalar(key, value, step)

    def close(self, raise_errors: bool = True) -> None:
        """Close the files. Every row was written as it was logged, so closing them fails only where a
        row already failed and raised; that repeat is not raised over the first error. TensorBoard
        writes its events in the background, so its last ones may fail only here; not ``raise_errors``
        (an error is already on its way) drops that failure too."""
        for fd in (self._jsonl, self._csv_file):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._jsonl = self._csv_file = -1
        if self._tb is not None:
            with contextlib.suppress(*(() if raise_errors else (FlowRLError,))), _naming(self._tb_path):
                self._tb.close()


_QUIET_THREADS: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
"""TensorBoard's writer threads: the error that ends one is raised again, by the writer's next call
(:func:`_naming` names it in one line), so its thread's traceback on stderr is left out."""


def _quiet(threads: set[threading.Thread]) -> None:
    """Leave the tracebacks of ``threads`` out of stderr (:data:`_QUIET_THREADS`), through a
    ``threading.excepthook`` that passes every other thread's on to the hook it replaced."""
    _QUIET_THREADS.update(threads)
    previous = threading.excepthook
    if getattr(previous, "quiet_threads", None) is _QUIET_THREADS:
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.thread not in _QUIET_THREADS:
            previous(args)

    hook.quiet_threads = _QUIET_THREADS  # type: ignore[attr-defined]
    threading.excepthook = hook


class MetricsError(FlowRLError):
    """A metrics file or TensorBoard's events could not be written; the message names it."""


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Turn an OSError while writing ``path`` into a :class:`MetricsError` that names it."""
    try:
        yield
    except OSError as exc:
        raise MetricsError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _open_append(path: Path) -> int:
    """A descriptor appending to ``path`` (made 0666 less the umask, as ``open`` makes it), bytes as given."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    return os.open(path, flags, 0o666)


def _append(fd: int, data: bytes) -> int:
    """Append ``data`` whole to ``fd`` (an unbuffered descriptor: nothing of a failed row is written later), or,
    where a write fails, truncate the file back to its length before it and raise. Returns that length."""
    end = os.lseek(fd, 0, os.SEEK_END)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, end)
        raise
    return end


def _jsonl_text(rows: list[dict]) -> str:
    """JSON lines, a NaN or infinite value written as null: the NaN token of Python's json (a diverged loss)
    is no JSON, and jq, JavaScript and Go refuse the file."""
    return "".join(
        json.dumps({k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}) + "\n"
        for row in rows
    )


def _csv_writer(stream: TextIO) -> csv.DictWriter:
    """Rows as :data:`CSV_COLUMNS`, empty where a row lacks one, other keys left out."""
    return csv.DictWriter(stream, fieldnames=CSV_COLUMNS, extrasaction="ignore")


def _csv_text(rows: list[dict], header: bool = True) -> str:
    buffer = io.StringIO(newline="")
    writer = _csv_writer(buffer)
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _rows_up_to(path: Path, csv_path: Path, step: int) -> list[dict]:
    """The rows of a metrics.jsonl logged at or before ``step`` (a torn last line is dropped); without
    one (deleted or compressed to save space), those of ``csv_path``."""
    if not path.is_file():
        return _csv_rows_up_to(csv_path, step)
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            rows.append(row)
    return rows


def _without_uncounted_episodes(rows: list[dict], episodes: int, step: int) -> list[dict]:
    """``rows`` less the rows of episodes past the checkpoint's count, ``episodes``: the last rows of episodes
    cut short (:data:`EPISODE_UNSTABLE`) at the checkpoint's ``step``, the only rows a run logs at that step after
    saving it (its failed step stored nothing). A normal episode's row, or one of another step, always stays."""
    excess = sum(EPISODE_RETURN in row for row in rows) - episodes
    kept: list[dict] = []
    for row in reversed(rows):
        if excess > 0 and EPISODE_RETURN in row and row["step"] == step and row.get(EPISODE_UNSTABLE):
            excess -= 1
            continue
        kept.append(row)
    return kept[::-1]


def _csv_rows_up_to(path: Path, step: int) -> list[dict]:
    """The rows of a metrics.csv logged at or before ``step``, its empty cells left out (a torn or
    malformed row is dropped, and so is a last row without its line end, cut short)."""
    if not path.is_file():
        return []
    rows = []
    text = path.read_text(encoding="utf-8", errors="replace")
    if text and not text.endswith("\n"):  # a last row cut short, maybe inside its last number: not a row
        text = text[: text.rfind("\n") + 1]
    with io.StringIO(text, newline="") as f:
        for row in csv.DictReader(f):
            if None in row.values() or None in row:  # fewer cells than columns (torn), or more
                continue
            try:
                values = {"step": int(row["step"])} | {k: float(v) for k, v in row.items() if k != "step" and v}
            except (KeyError, ValueError):
                continue
            if values["step"] <= step:
                rows.append(values)
    return rows


class RateMeter:
    """Env steps/s and updates/s since :meth:`restart` (or since it was made at ``steps``, ``updates``)."""

    def __init__(self, steps: int = 0, updates: int = 0) -> None:
        self.restart(steps, updates)

    def restart(self, steps: int, updates: int) -> None:
        self._t0, self._steps0, self._updates0 = time.perf_counter(), steps, updates

    def rates(self, steps: int, updates: int) -> tuple[float, float]:
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        return (steps - self._steps0) / elapsed, (updates - self._updates0) / elapsed


class Progress:
    """A one-line live status: step, env steps/s, updates/s, last episode and eval return.

    On a terminal (stderr) the line is redrawn in place at most once a second, padded with spaces
    over the longer line it replaces (a Windows console without VT processing prints an ANSI erase
    as ``←[K``); otherwise (a log file) one line is printed every 30 s so that logs stay readable.
    A line that cannot be written (stderr closed, or a log on a full disk) turns the line off: a status
    line is no reason to stop a run.
    """

    def __init__(self, total: int, start_steps: int = 0, start_updates: int = 0, enabled: bool = True) -> None:
        self.stream: TextIO | None = sys.stderr  # None: Python started with stderr closed (2>&-)
        self.total, self.enabled = total, enabled and self.stream is not None
        self.tty = self.stream is not None and self.stream.isatty()
        self._last_draw = time.perf_counter()
        self._drawn = 0  # the length of the line on the terminal
        self._since_start = RateMeter(start_steps, start_updates)
        self.episode_return: float | None = None
        self.eval_return: float | None = None

    def rates(self, steps: int, updates: int) -> tuple[float, float]:
        """Env steps/s and updates/s since this run (or resume) started, evaluations included."""
        return self._since_start.rates(steps, updates)

    def update(self, steps: int, updates: int, force: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not force and now - self._last_draw < (1.0 if self.tty else 30.0)):
            return
        self._last_draw = now
        sps, ups = self.rates(steps, updates)

        def fmt(x: float | None) -> str:
            return "—" if x is None else f"{x:.1f}"

        line = (
            f"step {steps}/{self.total} ({100 * steps / self.total:.0f}%) | {sps:.0f} env steps/s | "
            f"{ups:.1f} updates/s | episode return {fmt(self.episode_return)} | eval return {fmt(self.eval_return)}"
        )
        if self.tty:
            self._write("\r" + line.ljust(self._drawn))
            self._drawn = len(line)
        else:
            self._write(line + "\n")

    def clear(self) -> None:
        """Erase the live line from a terminal, so that a warning logged next gets a line of its own
        (the next update draws it again)."""
        if self.enabled and self.tty and self._drawn:
            self._write("\r" + " " * self._drawn + "\r")
            self._drawn = 0

    def close(self) -> None:
        if self.enabled and self.tty:
            self._write("\n")

    def _write(self, text: str) -> None:
        if self.stream is None:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except OSError:
            self.enabled = False
