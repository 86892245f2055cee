"""Each metrics row's env_steps_per_s and updates_per_s cover training alone since the previous row: the first row
after a start or resume counted the start-up before the first step (0.6 s after a resume: 121 steps/s against
about 220), and a row after a periodic save counted the save (a --save-replay save of a large buffer: seconds)."""

import json
import time

from tiny_training import TINY

from flowrl_deploy.train import TrainConfig, loop, train

PAUSE = 1.5


def rate_rows(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["charts/env_steps_per_s"] for row in rows if "charts/env_steps_per_s" in row}


def test_the_first_rate_row_leaves_out_what_came_before_the_first_step(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(steps=200, out=str(out), **TINY), progress=False, on_start=lambda: time.sleep(PAUSE))
    rates = rate_rows(out)
    assert rates[100] > 100 / PAUSE, rates  # counting the pause, the rate could not reach 100 / PAUSE


def test_a_rate_row_after_a_periodic_save_leaves_the_save_out(tmp_path, monkeypatch):
    real = loop._Run.save

    def slow_save(self, *args, **kwargs):
        time.sleep(PAUSE)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(loop._Run, "save", slow_save)
    out = tmp_path / "run"
    train(TrainConfig(steps=300, out=str(out), **{**TINY, "save_every": 100, "eval_every": 0}), progress=False)
    rates = rate_rows(out)
    # counting a save's pause, a row's rate could not reach 100 / PAUSE; without it, 100 steps take about 0.35 s
    # here, so a loaded machine still passes (the old bar, 2 * 100 / PAUSE, failed on one)
    assert rates[200] > 100 / PAUSE and rates[300] > 100 / PAUSE, rates
