"""The tiny training run the training tests share, a stop signal sent at a chosen env step, a kill
between saving a checkpoint and moving its link, and a random replay batch for one update."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from flowrl_deploy.train import loop, retention
from flowrl_deploy.train.config import flag
from flowrl_deploy.train.replay import Batch

TINY = dict(env="Pendulum-v1", hidden=16, batch_size=16, start_steps=100, eval_every=200, eval_episodes=1,
            save_every=200, log_every=100, threads=1)  # fmt: skip
"""`TrainConfig` fields of a run of a few seconds: the warm-up ends at step 100, an evaluation and a
checkpoint every 200 steps."""

TINY_FLAGS = [*(x for name, value in TINY.items() for x in (flag(name), str(value))), "--no-progress"]
"""`TINY` as `flowrl train` flags."""


def signal_at(monkeypatch: pytest.MonkeyPatch, step: int, *signals: int) -> None:
    """Send ``signals`` to this process, in order, when training reaches env step ``step`` (from the
    progress line's redraw, between two steps; not from the final one)."""

    class SignalAt(loop.Progress):
        def update(self, steps: int, updates: int, force: bool = False) -> None:
            if steps == step and not force:
                for signum in signals:
                    os.kill(os.getpid(), signum)
            super().update(steps, updates, force=force)

    monkeypatch.setattr(loop, "Progress", SignalAt)


class Killed(BaseException):
    """The process dying: nothing catches it, nothing after it runs."""


def kill_when_linking(monkeypatch: pytest.MonkeyPatch, name: str, step: int) -> None:
    """Raise :class:`Killed` where the link ``name`` would move to the checkpoint of ``step``."""
    real = retention.link_checkpoint

    def link(directory, link_name, target):
        if link_name == name and Path(target).name == retention.step_name(step):
            raise Killed
        real(directory, link_name, target)

    monkeypatch.setattr(retention, "link_checkpoint", link)


def linked(out: Path, name: str) -> str:
    """The checkpoint the link ``name`` of the run ``out`` points at."""
    return (out / "checkpoints" / name).resolve().name


def random_batch(seed: int = 0, mask: np.ndarray | None = None) -> Batch:
    """8 random transitions of a task with obs 3 and act 2 (actions in [-1, 1]); ``mask`` 0 marks a
    terminal one (default: none)."""
    rng = np.random.default_rng(seed)
    return Batch(
        obs=rng.standard_normal((8, 3), dtype=np.float32),
        action=rng.uniform(-1, 1, (8, 2)).astype(np.float32),
        reward=rng.standard_normal(8, dtype=np.float32),
        next_obs=rng.standard_normal((8, 3), dtype=np.float32),
        mask=np.ones(8, np.float32) if mask is None else mask,
    )
