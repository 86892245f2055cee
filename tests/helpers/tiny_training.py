"""The tiny training run the training tests share, and a stop signal sent at a chosen env step."""

from __future__ import annotations

import os

import pytest

from flowrl_deploy.train import loop
from flowrl_deploy.train.config import flag

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
