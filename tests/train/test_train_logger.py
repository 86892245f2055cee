"""metrics.jsonl / metrics.csv: a new run starts afresh, a resumed run keeps its rows up to the checkpoint."""

import csv
import errno
import io
import json
import os
import re
import threading
from types import SimpleNamespace

import pytest
from tiny_training import TINY

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.train import logger as logger_module
from flowrl_deploy.train import loop
from flowrl_deploy.train.config import TrainConfig
from flowrl_deploy.train.logger import MetricsLogger, Progress, RateMeter


def read_rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def log_steps(run_dir, steps, **kwargs) -> None:
    logger = MetricsLogger(run_dir, tensorboard=False, **kwargs)
    for step in steps:
        logger.log(step, {"charts/eval_return": float(step)})
    logger.close()


def test_a_new_run_does_not_append_to_the_metrics_of_a_crashed_one(tmp_path):
    log_steps(tmp_path, [100, 200])  # crashed before its first checkpoint
    log_steps(tmp_path, [100])
    assert [r["step"] for r in read_rows(tmp_path)] == [100]
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert [(r["step"], r["charts/eval_return"]) for r in csv.DictReader(f)] == [("100", "100.0")]


def test_a_resumed_run_keeps_the_rows_up_to_its_checkpoint_and_redoes_the_rest(tmp_path):
    log_steps(tmp_path, [100, 200, 300])
    with open(tmp_path / "metrics.jsonl", "a") as torn:
        torn.write('{"step": 4')  # a crash in the middle of a line
    log_steps(tmp_path, [300, 400], resume_step=200)
    assert [r["step"] for r in read_rows(tmp_path)] == [100, 200, 300, 400]
    csv_steps = [line.split(",")[0] for line in (tmp_path / "metrics.csv").read_text().splitlines()]
    assert csv_steps == ["step", "100", "200", "300", "400"]
    assert not list(tmp_path.glob("*.tmp"))


def tensorboard_points(run_dir) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars("charts/eval_return")]


def log_tensorboard(run_dir, steps, offset, **kwargs) -> None:
    logger = MetricsLogger(run_dir, **kwargs)
    for step in steps:
        logger.log(step, {"charts/eval_return": step + offset})
    logger.close()


def test_tensorboard_drops_the_points_a_resumed_run_redoes(tmp_path):
    """The old event file stays; the resumed run's purge hides its points after the checkpoint's step."""
    log_tensorboard(tmp_path, [100, 200, 300], 0.0)  # killed at 300, resumed from its checkpoint at 200
    (old,) = (tmp_path / "tensorboard").iterdir()  # dated earlier: files of the same second sort by a counter
    old.rename(old.with_name("events.out.tfevents.0000000001.host.1.0"))
    log_tensorboard(tmp_path, [300, 400], 0.5, resume_step=200)
    assert tensorboard_points(tmp_path) == [(100, 100.0), (200, 200.0), (300, 300.5), (400, 400.5)]


def test_a_new_run_removes_the_tensorboard_events_of_a_crashed_one(tmp_path):
    log_tensorboard(tmp_path, [100, 200], 0.0)  # crashed before its first checkpoint
    log_tensorboard(tmp_path, [100], 0.5)
    assert tensorboard_points(tmp_path) == [(100, 100.5)]
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_a_resume_drops_the_rows_of_episodes_its_checkpoint_does_not_count(tmp_path):
    # saved at step 200 counting 2 episodes (steps 100 and 200); the first row is a cut episode's that an older
    # version's resume kept (not counted); one more episode, cut right after the save, was logged at step 200 too
    episode, cut = {"charts/episode_return": 1.0}, {"charts/episode_return": 0.0, "charts/episode_unstable": 1.0}
    rows = [(50, cut), (100, episode), (200, episode), (200, {"charts/eval_return": 2.0}), (200, cut), (300, episode)]
    logger = MetricsLogger(tmp_path, tensorboard=False)
    for step, scalars in rows:
        logger.log(step, scalars)
    logger.close()
    MetricsLogger(tmp_path, tensorboard=False, resume_step=200, resume_episodes=2).close()
    kept = [{"step": step, **scalars} for step, scalars in rows[:4]]  # only a cut episode's row of step 200 goes
    assert read_rows(tmp_path) == kept
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 5  # the header and the same four rows


def test_a_metrics_file_that_fails_mid_run_is_named_and_closing_does_not_raise_again(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    os.close(logger._jsonl)
    logger._jsonl = os.open("/dev/full", os.O_WRONLY)  # every write fails: No space left on device
    with pytest.raises(FlowRLError, match=f"^cannot write {re.escape(str(tmp_path / 'metrics.jsonl'))}: No space"):
        logger.log(100, {"charts/eval_return": 1.0})
    logger.close()


def test_tensorboard_events_that_cannot_be_written_are_named(tmp_path, monkeypatch):
    logger = MetricsLogger(tmp_path)

    def disk_full() -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(logger._tb, "close", disk_full)
    with pytest.raises(FlowRLError, match=f"^cannot write {re.escape(str(tmp_path / 'tensorboard'))}: No space"):
        logger.close()


def test_the_tensorboard_traceback_hook_hides_only_its_writer_threads(tmp_path, monkeypatch):
    """The hook is process-wide and outlives the run: every other thread's uncaught exception still reaches the
    hook it replaced (a library user's, pytest's), and only TensorBoard's writer threads are left out."""
    seen = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.thread))
    before = set(threading.enumerate())
    logger = MetricsLogger(tmp_path)  # with TensorBoard: installs the hook
    try:
        writers = set(threading.enumerate()) - before
        assert writers
        for writer in writers:  # as the writer's failure would call it
            threading.excepthook(
                SimpleNamespace(thread=writer, exc_type=OSError, exc_value=OSError(), exc_traceback=None)
            )
        other = threading.Thread(target=lambda: 1 / 0, name="another")
        other.start()
        other.join()
    finally:
        logger.close()
    assert seen == [other]


def test_rates_count_only_the_steps_and_updates_since_this_run_or_resume_started(monkeypatch):
    """A run resumed at env step 500 (400 updates) that reaches 600 (450) 2 s later runs 50 env
    steps/s and 25 updates/s, not 300 and 225."""
    clock = [10.0]
    monkeypatch.setattr(logger_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    progress = Progress(1000, start_steps=500, start_updates=400, enabled=False)
    clock[0] = 12.0
    assert progress.rates(600, 450) == (50.0, 25.0)


def test_a_rate_meter_counts_from_its_last_restart(monkeypatch):
    clock = [10.0]
    monkeypatch.setattr(logger_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    meter = RateMeter(500, 400)
    clock[0] = 12.0
    assert meter.rates(600, 450) == (50.0, 25.0)
    meter.restart(600, 450)
    clock[0] = 12.5
    assert meter.rates(700, 550) == (200.0, 200.0)


def test_each_row_reaches_both_files_as_it_is_logged(tmp_path):
    """A dashboard (or tail -f) reads metrics.jsonl and metrics.csv while training runs."""
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(100, {"charts/eval_return": -3.5})
    try:
        assert read_rows(tmp_path) == [{"step": 100, "charts/eval_return": -3.5}]
        with open(tmp_path / "metrics.csv", newline="") as f:
            assert [(r["step"], r["charts/eval_return"]) for r in csv.DictReader(f)] == [("100", "-3.5")]
    finally:
        logger.close()


def test_a_resume_without_metrics_jsonl_keeps_the_rows_of_metrics_csv(tmp_path):
    """metrics.jsonl deleted (to stay under a quota): the resume rebuilt both files from it alone, so
    metrics.csv lost every row up to the checkpoint."""
    log_steps(tmp_path, [100, 200, 300])
    (tmp_path / "metrics.jsonl").unlink()
    with open(tmp_path / "metrics.csv", "a") as torn:
        torn.write("4")  # a crash in the middle of a row
    log_steps(tmp_path, [300], resume_step=200)
    assert read_rows(tmp_path) == [{"step": s, "charts/eval_return": float(s)} for s in (100, 200, 300)]
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert [(r["step"], r["charts/eval_return"]) for r in csv.DictReader(f)] == [
            ("100", "100.0"), ("200", "200.0"), ("300", "300.0")
        ]  # fmt: skip


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_line_is_redrawn_with_spaces_not_an_ansi_erase(monkeypatch):
    """A Windows console without VT processing printed '\\033[K' as '←[K' after every redraw: a shorter
    line is padded with spaces over the longer one it replaces."""
    monkeypatch.setattr(logger_module.sys, "stderr", _Terminal())
    progress = Progress(1000)
    progress.eval_return = 123456.5
    progress.update(500, 400, force=True)
    progress.eval_return = None
    progress.update(600, 500, force=True)
    progress.close()
    output = progress.stream.getvalue()
    assert "\033" not in output
    first, second = output.rstrip("\n").split("\r")[1:]
    assert first.endswith("eval return 123456.5") and second.rstrip().endswith("eval return —")
    assert len(second) == len(first) and second.endswith(" " * (len("123456.5") - 1))


def test_clearing_the_live_line_leaves_the_terminal_line_empty_for_a_warning(monkeypatch):
    monkeypatch.setattr(logger_module.sys, "stderr", _Terminal())
    progress = Progress(1000)
    progress.update(500, 400, force=True)
    drawn = progress.stream.getvalue()
    progress.clear()
    assert progress.stream.getvalue() == drawn + "\r" + " " * (len(drawn) - 1) + "\r"
    cleared = progress.stream.getvalue()
    progress.clear()  # nothing drawn since: nothing to erase
    assert progress.stream.getvalue() == cleared
    progress.update(600, 500, force=True)  # the next redraw starts afresh on the empty line, unpadded
    redrawn = progress.stream.getvalue().removeprefix(cleared)
    assert redrawn.startswith("\rstep 600/1000") and not redrawn.endswith(" ")


class _FullDisk(io.StringIO):
    """A stream on a full disk (a SLURM log on full scratch): every write fails, as /dev/full's."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty, self.writes = tty, 0

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        self.writes += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("tty", [False, True])
def test_a_progress_line_that_cannot_be_written_turns_the_line_off(monkeypatch, tty):
    monkeypatch.setattr(logger_module.sys, "stderr", _FullDisk(tty))
    progress = Progress(1000)
    progress.update(500, 400, force=True)
    assert not progress.enabled and progress.stream.writes == 1
    progress.update(600, 500, force=True)
    progress.clear()
    progress.close()
    assert progress.stream.writes == 1  # no further try


def test_a_training_run_whose_stderr_is_on_a_full_disk_finishes_and_saves(monkeypatch, tmp_path):
    monkeypatch.setattr(logger_module.sys, "stderr", _FullDisk(False))
    result = loop.train(TrainConfig(steps=200, out=str(tmp_path / "run"), **TINY), progress=True)
    assert result.counters.env_steps == 200 and result.last_checkpoint.name == "step_000000200"
    assert logger_module.sys.stderr.writes == 1  # the closing line (a run this short draws no other)


def test_a_nan_or_infinite_value_is_null_in_metrics_jsonl_which_stays_strict_json(tmp_path):
    """A diverged loss wrote Python's NaN token, no JSON: jq 1.5, JavaScript's JSON.parse and Go refuse the file."""
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(100, {"losses/q_pi_loss": float("nan"), "losses/actor_loss": float("-inf"), "charts/eval_return": 1.5})
    logger.close()

    def refuse(token):
        raise ValueError(f"{token} is no JSON")

    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    row = json.loads(line, parse_constant=refuse)
    assert row == {"step": 100, "losses/q_pi_loss": None, "losses/actor_loss": None, "charts/eval_return": 1.5}
    MetricsLogger(tmp_path, tensorboard=False, resume_step=100).close()  # a resume rewrites the rows it keeps
    assert json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=refuse) == row


def test_a_progress_line_without_a_stderr_is_off(monkeypatch):
    """Python started with stderr closed (`2>&-`) has sys.stderr None: Progress raised AttributeError at once."""
    monkeypatch.setattr(logger_module.sys, "stderr", None)
    progress = Progress(1000)
    progress.update(500, 400, force=True)
    progress.close()
    assert not progress.enabled
