"""A hand-edited or corrupt checkpoint.json: resuming or evaluating it is one error that names the
checkpoint and the bad field, never a TypeError or AttributeError from deep inside."""

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from flowrl_deploy.checkpoint import DOCUMENT_FILE
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.train.config import TrainConfig
from flowrl_deploy.train.evaluate import checkpoint_act_fn
from flowrl_deploy.train.loop import train
from flowrl_deploy.train.resume import resume_config

TINY = dict(env="Pendulum-v1", hidden=8, batch_size=8, start_steps=50, eval_every=100, eval_episodes=1,
            save_every=0, log_every=50, threads=1)  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train(TrainConfig(steps=100, out=str(tmp_path_factory.mktemp("run")), **TINY), progress=False)


def edited(run, tmp_path: Path, edit: Callable[[dict], object]) -> Path:
    """A copy of the run whose last checkpoint's document ``edit`` changed; its checkpoint directory."""
    copy = shutil.copytree(run.run_dir, tmp_path / "copy", symlinks=True)
    checkpoint = (copy / "checkpoints" / "last").resolve()
    document = json.loads((checkpoint / DOCUMENT_FILE).read_text())
    edit(document)
    (checkpoint / DOCUMENT_FILE).write_text(json.dumps(document))
    return checkpoint


def resume(checkpoint: Path) -> None:
    train(resume_config(checkpoint, steps=150), resume=checkpoint, progress=False)


DOCUMENT = "{checkpoint}/checkpoint.json: "


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format_version="x"), DOCUMENT + "format_version must be a positive integer, got 'x'"),
        (
            lambda d: d.update(counters="x"),
            DOCUMENT + "counters must be a JSON object of non-negative integers, got 'x'",
        ),
        (
            lambda d: d["counters"].update(env_steps="x"),
            DOCUMENT + "counters must be a JSON object of non-negative integers",
        ),
        (lambda d: d.update(config=[1]), DOCUMENT + "config must be a JSON object, got list"),
        (lambda d: d["config"].update(foo=1), DOCUMENT + "unknown config fields: foo"),
        (lambda d: d["config"].update(hidden="8"), DOCUMENT + "config.hidden must be an integer, got '8'"),
        (lambda d: d["config"].update(seed=2**32), DOCUMENT + "config.seed must lie in [0, 2**32), got 4294967296"),
        (lambda d: d.update(eval="x"), DOCUMENT + "eval must be a JSON object of finite numbers or null"),
        (lambda d: d["eval"].update(best_return="x"), DOCUMENT + "eval must be a JSON object of finite numbers"),
        (lambda d: d["spec"].update(hidden=8.0), "{checkpoint}: hidden must be an integer, got 8.0"),
        (lambda d: d["spec"].update(flow_steps=1.5), "{checkpoint}: flow_steps must be an integer, got 1.5"),
        (lambda d: d["spec"].update(noise_clip="x"), "{checkpoint}: noise_clip must be a number, got 'x'"),
        (lambda d: d["spec"].update(noise_clip=-1), "{checkpoint}: noise_clip must be a finite number > 0, got -1"),
        (
            lambda d: d["spec"].update(spec_version="2"),
            "{checkpoint}: spec_version must be a positive integer, got '2'",
        ),
    ],
)
def test_resuming_a_hand_edited_checkpoint_names_it_and_the_field(run, tmp_path, edit, message):
    checkpoint = edited(run, tmp_path, edit)
    with pytest.raises(FlowRLError, match=f"^{re.escape(message.format(checkpoint=checkpoint))}"):
        resume(checkpoint)


@pytest.mark.parametrize(
    "edit",
    [lambda d: d["spec"].update(hidden=8.0), lambda d: d.update(format_version="x"), lambda d: d.update(spec=[1])],
)
def test_evaluating_a_hand_edited_checkpoint_names_it(run, tmp_path, edit):
    checkpoint = edited(run, tmp_path, edit)
    with pytest.raises(FlowRLError, match=f"^{re.escape(str(checkpoint))}"):
        checkpoint_act_fn(checkpoint, device="cpu")
