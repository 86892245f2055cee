"""One check of a checkpoint's actor weights (flowrl_deploy.checkpoint.check_actor), made by
`flowrl export`, `flowrl eval` and the torch actor: each refusal is one line naming the checkpoint,
the tensor and the problem, worded alike by both commands."""

from __future__ import annotations

import numpy as np
import pytest
from export_fixtures import actor_tensors
from typer.testing import CliRunner

from flowrl_deploy.checkpoint import actor_shapes, save_checkpoint
from flowrl_deploy.cli import app
from flowrl_deploy.errors import CheckpointError
from flowrl_deploy.spec import PolicySpec
from flowrl_deploy.train.actor import FlowActor

CARTPOLE = PolicySpec(obs_dim=5, act_dim=1, action_low=(-1.0,), action_high=(1.0,), hidden=16,
                      env_id="dmc:cartpole-swingup")  # fmt: skip
MISMATCH = "the actor weights do not match its spec"


def _drop(actor):
    del actor["velocity.net.6.bias"]
    return "{ck}: " + MISMATCH + ": missing ['velocity.net.6.bias']"


def _extra(actor):
    actor["obs_norm.mean"] = np.zeros(5, np.float32)
    return "{ck}: " + MISMATCH + ": unknown tensors ['obs_norm.mean']"


def _wide(actor):
    actor["velocity.net.3.weight"] = np.zeros((17, 16), np.float32)
    return "{ck}: " + MISMATCH + ": velocity.net.3.weight has shape (17, 16), the spec implies (16, 16)"


def _drop_and_widen(actor):
    _wide(actor)
    return _drop(actor) + " (and 1 more)"


def _nan(actor):
    actor["velocity.net.0.bias"][3] = np.inf
    return "{ck}: actor tensor velocity.net.0.bias holds NaN or infinite values (training diverged?)"


@pytest.mark.parametrize(
    "spoil", [_drop, _extra, _wide, _drop_and_widen, _nan], ids=["missing", "unknown", "shape", "two", "nan"]
)
def test_export_and_eval_name_the_checkpoint_the_tensor_and_the_problem(tmp_path, spoil):
    actor = actor_tensors(CARTPOLE)
    message = spoil(actor)
    checkpoint = save_checkpoint(tmp_path / "ck", spec=CARTPOLE, actor=actor)
    expected = f"error: {message.format(ck=checkpoint)}\n"
    runner = CliRunner()
    for args in (["export", str(checkpoint), "--out", str(tmp_path / "p.onnx")], ["eval", str(checkpoint)]):
        result = runner.invoke(app, [*args, "--episodes", "1"] if args[0] == "eval" else args)
        assert result.exit_code == 1, result.output
        assert result.output.endswith(expected), result.output
    assert not (tmp_path / "p.onnx").exists()


@pytest.mark.parametrize("hidden", [8, 32])
def test_the_checked_shapes_are_those_of_the_torch_actor(hidden):
    spec = PolicySpec(obs_dim=3, act_dim=2, action_low=(-1.0, -1.0), action_high=(1.0, 1.0), hidden=hidden)
    module = {key: tuple(value.shape) for key, value in FlowActor(spec).state_dict().items()}
    assert actor_shapes(spec) == module


def test_the_torch_actor_refuses_weights_the_check_refuses():
    """FlowActor.from_numpy (training's resume, export verification) makes the same check, without a path."""
    actor = actor_tensors(CARTPOLE)
    actor["velocity.net.0.bias"][0] = np.nan
    with pytest.raises(CheckpointError, match=r"^actor tensor velocity\.net\.0\.bias holds NaN or infinite values"):
        FlowActor.from_numpy(CARTPOLE, actor)


def test_export_and_loading_a_checkpoints_actor_check_it_once(tmp_path, monkeypatch):
    """Each checked the weights twice: Checkpoint.checked_actor, then VelocityWeights.from_actor (export) or
    FlowActor.from_numpy (eval, and every caller of load_actor) again."""
    from flowrl_deploy import checkpoint as checkpoint_module
    from flowrl_deploy.export import ExportConfig, export_checkpoint, graph
    from flowrl_deploy.train import actor as actor_module
    from flowrl_deploy.train.actor import load_actor

    checkpoint = save_checkpoint(tmp_path / "ck", spec=CARTPOLE, actor=actor_tensors(CARTPOLE))
    sources = []
    for module in (checkpoint_module, graph, actor_module):
        real = module.check_actor
        counted = lambda actor, spec, source="", real=real: sources.append(source) or real(actor, spec, source)  # noqa: E731
        monkeypatch.setattr(module, "check_actor", counted)
    load_actor(checkpoint)
    export_checkpoint(checkpoint, tmp_path / "p.onnx", ExportConfig(verify=False))
    assert sources == [checkpoint, checkpoint]  # one check each, naming the checkpoint
