"""Each metrics row's env_steps_per_s and updates_per_s cover training alone since the previous row: the first row
after a start or resume counted the start-up before the first step (0.6 s after a resume: 121 steps/s against
about 220), and a row after a periodic save counted the save (a --save-replay save of a large buffer: seconds)."""

import json
import time
from types import SimpleNamespace

import pytest
from tiny_training import TINY

from flowrl_deploy.train import TrainConfig, logger, loop, train

PAUSE = 1000.0
"""Seconds a pause moves the rate meters' clock, at no cost: a row counting one could not reach 100 / PAUSE
(0.1 steps/s), which any machine beats by far, however loaded (a real 1.5 s pause made the bar 66.7 steps/s,
and 100 steps took up to 4.5 s beside busy loops)."""


@pytest.fixture
def pause(monkeypatch):
    """A pause of PAUSE s on the clock the rate meters read (logger's time.perf_counter), taking no time."""
    skew = [0.0]
    clock = SimpleNamespace(perf_counter=lambda: time.perf_counter() + skew[0])
    monkeypatch.setattr(logger, "time", clock)

    def paused() -> None:
        skew[0] += PAUSE

    return paused


def rate_rows(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["charts/env_steps_per_s"] for row in rows if "charts/env_steps_per_s" in row}


def test_the_first_rate_row_leaves_out_what_came_before_the_first_step(tmp_path, pause):
    out = tmp_path / "run"
    train(TrainConfig(steps=200, out=str(out), **TINY), progress=False, on_start=pause)
    rates = rate_rows(out)
    assert rates[100] > 100 / PAUSE, rates  # counting the pause, the rate could not reach 100 / PAUSE


def test_a_rate_row_after_a_periodic_save_leaves_the_save_out(tmp_path, monkeypatch, pause):
    real = loop._Run.save

    def slow_save(self, *args, **kwargs):
        pause()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(loop._Run, "save", slow_save)
    out = tmp_path / "run"
    train(TrainConfig(steps=300, out=str(out), **{**TINY, "save_every": 100, "eval_every": 0}), progress=False)
    rates = rate_rows(out)
    assert rates[200] > 100 / PAUSE and rates[300] > 100 / PAUSE, rates  # counting a save's pause, below
