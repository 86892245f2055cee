"""End to end: a short run writes metrics and checkpoints that load, evaluate and resume exactly."""

import json

import numpy as np
import pytest
import torch

from flowrl_deploy.checkpoint import load_checkpoint, read_document
from flowrl_deploy.errors import CheckpointError, FlowRLError
from flowrl_deploy.train.checkpointing import load_actor
from flowrl_deploy.train.config import TrainConfig
from flowrl_deploy.train.evaluate import checkpoint_act_fn, evaluate
from flowrl_deploy.train.loop import resume_config, train

# Pendulum: 200-step episodes, so saves every 200 steps fall on episode boundaries.
TINY = dict(env="Pendulum-v1", hidden=16, batch_size=16, start_steps=100, eval_every=200, eval_episodes=1,
            save_every=200, log_every=100, threads=1)  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return train(TrainConfig(steps=400, out=str(out), **TINY), progress=False)


def test_a_run_writes_config_metrics_and_checkpoints(run):
    assert TrainConfig.load(run.run_dir / "config.json") == TrainConfig(steps=400, out=str(run.run_dir), **TINY)
    rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "charts/eval_return" in r] == [200, 400]
    assert all(np.isfinite(r["charts/eval_return_deterministic"]) for r in rows if "charts/eval_return" in r)
    assert any("losses/q_pi_loss" in r and "losses/actor_loss" in r for r in rows)
    assert (run.run_dir / "metrics.csv").read_text().startswith("step,charts/episode_return")
    assert any((run.run_dir / "tensorboard").iterdir())
    checkpoints = run.run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_000000200", "step_000000400"]
    assert (checkpoints / "last").resolve().name == "step_000000400"
    assert (checkpoints / "best").resolve().name in ("step_000000200", "step_000000400")


def test_the_checkpoint_records_spec_config_and_counters(run):
    checkpoint = load_checkpoint(run.last_checkpoint, training_state=True)
    assert checkpoint.counters == {"env_steps": 400, "episodes": 2, "updates": 301}  # updates from step 100
    assert checkpoint.spec.env_id == "Pendulum-v1" and checkpoint.spec.hidden == 16
    assert checkpoint.spec.action_low == (-2.0,) and checkpoint.spec.flow_steps == 1
    assert checkpoint.config["cfm_weighting"] == "batch" and checkpoint.config["steps"] == 400
    assert "q_pi_target.net.0.weight" in checkpoint.training_tensors
    assert not checkpoint.replay  # not asked for


def test_deterministic_acting_starts_from_zero_noise(run):
    act = checkpoint_act_fn(run.run_dir, device="cpu", deterministic=True)
    obs = np.array([1.0, 0.0, 0.5], np.float32)
    first = act(obs)
    np.testing.assert_array_equal(first, act(obs))  # no noise drawn: the same action every time
    actor = load_actor(run.run_dir, "cpu")
    with torch.no_grad():
        expected = actor(torch.as_tensor(obs)[None], torch.zeros(1, 1))[0].numpy()
    np.testing.assert_allclose(first, expected, rtol=1e-6)
    sampled = checkpoint_act_fn(run.run_dir, device="cpu", seed=3)
    assert not np.array_equal(sampled(obs), sampled(obs))


@pytest.mark.parametrize("flow_steps", [None, 5])
def test_the_checkpoint_loads_and_evaluates_with_any_flow_steps(run, flow_steps):
    act = checkpoint_act_fn(run.run_dir, flow_steps=flow_steps, device="cpu")
    action = act(np.zeros(3, np.float32))
    assert action.shape == (1,) and -2.0 <= action[0] <= 2.0
    result = evaluate(act, "Pendulum-v1", episodes=2, seed=0)
    assert len(result.returns) == 2 and np.isfinite(result.mean) and result.mean < 0


def test_resume_continues_exactly_like_an_uninterrupted_run(run, tmp_path):
    half = train(TrainConfig(steps=200, out=str(tmp_path / "half"), save_replay=True, **TINY), progress=False)
    whole = train(TrainConfig(steps=400, out=str(tmp_path / "whole"), save_replay=True, **TINY), progress=False)
    resumed = train(resume_config(half.run_dir, steps=400), resume=half.run_dir, progress=False)
    assert resumed.run_dir == half.run_dir
    a, b = (load_checkpoint(r.last_checkpoint, training_state=True) for r in (whole, resumed))
    assert a.counters == b.counters == {"env_steps": 400, "episodes": 2, "updates": 301}
    for key in a.actor:
        np.testing.assert_array_equal(a.actor[key], b.actor[key])
    for key in a.training_tensors:
        np.testing.assert_array_equal(a.training_tensors[key], b.training_tensors[key])
    assert a.document["eval"] == b.document["eval"]
    assert eval_rows(resumed.run_dir) == eval_rows(whole.run_dir)  # the half's rows kept, none twice


def eval_rows(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "charts/eval_return" in r]


def test_resume_without_a_saved_buffer_keeps_the_counters(run, tmp_path):
    half = train(TrainConfig(steps=200, out=str(tmp_path / "half"), **TINY), progress=False)
    resumed = train(resume_config(half.last_checkpoint, steps=300), resume=half.last_checkpoint, progress=False)
    counters = read_document(resumed.last_checkpoint)["counters"]
    assert counters["env_steps"] == 300 and counters["episodes"] == 1
    assert counters["updates"] == 101 + (100 - 15)  # refills 16 transitions before updating again


def test_resuming_a_finished_run_rewrites_nothing(run, tmp_path):
    import shutil

    copy = shutil.copytree(run.run_dir, tmp_path / "copy", symlinks=True)
    last = copy / "checkpoints" / "step_000000400"
    before = {p.name: p.stat().st_mtime_ns for p in last.iterdir()}
    resumed = train(resume_config(copy, steps=400), resume=copy, progress=False)
    assert resumed.last_checkpoint == last.resolve()
    assert {p.name: p.stat().st_mtime_ns for p in last.iterdir()} == before  # not written again
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == sorted(
        p.name for p in (run.run_dir / "checkpoints").iterdir()
    )


def test_resuming_with_fewer_steps_than_taken_is_refused(run):
    with pytest.raises(FlowRLError, match="--steps 300 is less than the 400 env steps step_000000400 has taken"):
        resume_config(run.run_dir, steps=300)


def test_a_save_cut_short_by_a_crash_is_cleaned_up_by_the_next(run, tmp_path):
    import shutil

    copy = shutil.copytree(run.run_dir, tmp_path / "copy", symlinks=True)
    partial = copy / "checkpoints" / ".step_000000500.tmp-crashed"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half written")
    train(resume_config(copy, steps=500), resume=copy, progress=False)
    assert not partial.exists()
    assert (copy / "checkpoints" / "last").resolve().name == "step_000000500"


def test_a_corrupt_checkpoint_is_a_clear_error(run, tmp_path):
    import shutil

    broken = shutil.copytree(run.last_checkpoint, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        checkpoint_act_fn(broken, device="cpu")
    (broken / "model.safetensors").unlink()
    (broken / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        resume_config(broken)


def test_a_new_run_refuses_to_mix_into_an_existing_one(run):
    with pytest.raises(FlowRLError, match="--resume"):
        train(TrainConfig(steps=10, out=str(run.run_dir), **TINY), progress=False)
