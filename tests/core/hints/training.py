"""A researcher's typed training script (docs/train.md "Training from Python"): passes mypy --strict."""

from __future__ import annotations

from pathlib import Path

from flowrl_deploy.train import EvalResult, TrainConfig, TrainResult, checkpoint_act_fn, resume_config, train
from flowrl_deploy.train.evaluate import evaluate


def make_config(out: str) -> TrainConfig:
    return TrainConfig(env="dmc:cartpole-swingup", steps=40_000, hidden=256, out=out)


def train_and_extend(out: str) -> Path:
    result: TrainResult = train(make_config(out))
    more = train(resume_config(result.run_dir, steps=60_000), resume=result.run_dir)
    if more.interrupted and more.last_checkpoint is None:
        raise SystemExit(f"stopped by signal {more.stop_signal} before the first checkpoint")
    return more.run_dir


def score(run_dir: Path) -> float:
    report: EvalResult = evaluate(checkpoint_act_fn(run_dir, flow_steps=4), "dmc:cartpole-swingup", episodes=10)
    return float(sum(report.returns) / len(report.returns))
