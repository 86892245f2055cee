"""End to end: a short run writes metrics and checkpoints that load, evaluate and resume exactly."""

import csv
import json
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_training import TINY

from flowrl_deploy.checkpoint import load_checkpoint, read_document
from flowrl_deploy.errors import CheckpointError, FlowRLError
from flowrl_deploy.noise import draw_noise, session_noise
from flowrl_deploy.spec import PolicySpec
from flowrl_deploy.train import loop
from flowrl_deploy.train.actor import actor_act_fn, load_actor
from flowrl_deploy.train.algorithm import FlowRL
from flowrl_deploy.train.config import ConfigError, TrainConfig
from flowrl_deploy.train.envs import episode_seed
from flowrl_deploy.train.evaluate import (
    EVAL_NOISE_STREAM,
    EVAL_STREAM,
    Episode,
    EvalResult,
    checkpoint_act_fn,
    evaluate,
)
from flowrl_deploy.train.logger import CSV_COLUMNS
from flowrl_deploy.train.loop import train
from flowrl_deploy.train.replay import Batch, ReplayBuffer
from flowrl_deploy.train.resume import resume_config
from flowrl_deploy.train.retention import RunCheckpoints

# Pendulum: 200-step episodes, so saves every 200 steps fall on episode boundaries.


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return train(TrainConfig(steps=400, out=str(out), **TINY), progress=False)


def test_a_run_writes_config_metrics_and_checkpoints(run):
    assert TrainConfig.load(run.run_dir / "config.json") == TrainConfig(steps=400, out=str(run.run_dir), **TINY)
    rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "charts/eval_return" in r] == [200, 400]
    assert all(np.isfinite(r["charts/eval_return_deterministic"]) for r in rows if "charts/eval_return" in r)
    # Pendulum's episodes end by their 200-step time limit only
    assert [r["charts/eval_episode_length"] for r in rows if "charts/eval_return" in r] == [200.0, 200.0]
    episodes = [r for r in rows if "charts/episode_return" in r]
    assert [(r["step"], r["charts/episode_length"], r["charts/episode_terminated"]) for r in episodes] == [
        (200, 200, 0.0),
        (400, 200, 0.0),
    ]
    assert any("losses/q_pi_loss" in r and "losses/actor_loss" in r for r in rows)
    assert (run.run_dir / "metrics.csv").read_text().startswith("step,charts/episode_return")
    assert any((run.run_dir / "tensorboard").iterdir())
    checkpoints = run.run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_000000200", "step_000000400"]
    assert (checkpoints / "last").resolve().name == "step_000000400"
    returns = {r["step"]: r["charts/eval_return"] for r in rows if "charts/eval_return" in r}
    best_step = max(returns, key=returns.__getitem__)
    assert (checkpoints / "best").resolve().name == f"step_{best_step:09d}"
    assert read_document(checkpoints / "best")["eval"]["best_return"] == returns[best_step]


def test_every_logged_metric_is_a_csv_column_and_reaches_metrics_csv(run):
    """CSV_COLUMNS is written by hand and the CSV writer drops other keys: a metric added to the
    update or the loop without its column would vanish from metrics.csv (metrics.jsonl keeps all)."""
    rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert set().union(*rows) == set(CSV_COLUMNS)  # every key a column, and no column that nothing fills
    with open(run.run_dir / "metrics.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [{k: v for k, v in r.items() if v != ""} for r in csv_rows] == [
        {k: str(v) for k, v in r.items()} for r in rows
    ]


def test_an_update_logs_only_csv_columns():
    """Both halves of an update (policy_delay 1: every update also steps the actor), as the loop logs them."""
    spec = PolicySpec(obs_dim=3, act_dim=1, action_low=(-1.0,), action_high=(1.0,), hidden=8)
    agent = FlowRL(spec, TrainConfig(hidden=8, batch_size=4, policy_delay=1))
    rng = np.random.default_rng(0)
    obs, action, next_obs = (rng.standard_normal((4, n), dtype=np.float32) for n in (3, 1, 3))
    metrics = agent.update(Batch(obs, action, np.ones(4, np.float32), next_obs, np.ones(4, np.float32)))
    assert {"q_pi_loss", "actor_loss"} <= set(metrics)
    assert {f"losses/{k}" for k in metrics} <= set(CSV_COLUMNS)


def _scripted_evaluations(monkeypatch, scripted: dict[int, float]) -> None:
    def fake_evaluate(
        agent: object, eval_env: object, cfg: TrainConfig, step: int, deterministic: bool = False, stop=None
    ) -> EvalResult:
        return EvalResult.of([Episode(scripted[step], 200, False)])

    monkeypatch.setattr(loop, "_evaluate", fake_evaluate)


def test_best_points_at_the_highest_evaluation_even_across_a_resume(monkeypatch, tmp_path):
    """Scripted evaluation returns: ``best`` follows the highest, not the latest, and a resumed run
    keeps comparing against the best it had before the stop."""
    _scripted_evaluations(monkeypatch, {100: -5.0, 200: -1.0, 300: -3.0, 400: -2.0, 500: -4.0})
    config = {**TINY, "eval_every": 100}
    first = train(TrainConfig(steps=400, out=str(tmp_path / "run"), **config), progress=False)
    checkpoints = first.run_dir / "checkpoints"
    assert (checkpoints / "best").resolve().name == "step_000000200"
    assert read_document(checkpoints / "last")["eval"] == {"best_return": -1.0, "last_return": -2.0, "last_step": 400}
    resumed = train(resume_config(first.run_dir, steps=500), resume=first.run_dir, progress=False)
    assert resumed.counters.best_eval_return == -1.0
    assert (checkpoints / "best").resolve().name == "step_000000200"  # -4 at step 500 is no better
    assert (checkpoints / "last").resolve().name == "step_000000500"


def test_a_best_checkpoint_between_periodic_saves_is_kept(monkeypatch, tmp_path):
    """Step 100 is no multiple of save_every, but ``best`` names it: pruning must spare it."""
    _scripted_evaluations(monkeypatch, {100: -1.0, 200: -5.0, 300: -3.0})
    result = train(TrainConfig(steps=300, out=str(tmp_path / "run"), **{**TINY, "eval_every": 100}), progress=False)
    checkpoints = result.run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_000000100", "step_000000200", "step_000000300"]
    assert (checkpoints / "best").resolve().name == "step_000000100"
    assert load_checkpoint(checkpoints / "best").counters["env_steps"] == 100


def _save_steps(checkpoints: RunCheckpoints, steps: list[tuple[int, bool]]) -> list[str]:
    """Save each (step, best) with a write that records the folder it writes; returns those names."""
    written: list[str] = []

    def write(path: Path) -> None:
        written.append(path.name)
        path.mkdir(exist_ok=True)

    for step, best in steps:
        checkpoints.save(step, write, best=best)
    return written


def test_without_periodic_saves_only_the_best_and_last_checkpoints_are_kept(tmp_path):
    """--save-every 0 turns periodic checkpoints off: an evaluation's checkpoint is removed once
    neither ``best`` nor ``last`` names it, not kept forever."""
    checkpoints = RunCheckpoints(tmp_path, save_every=0)
    _save_steps(checkpoints, [(10, True), (20, False), (30, False)])
    assert sorted(p.name for p in checkpoints.dir.glob("step_*")) == ["step_000000010", "step_000000030"]
    assert (checkpoints.dir / "best").resolve().name == "step_000000010"
    assert (checkpoints.dir / "last").resolve().name == "step_000000030"


def test_a_step_saved_twice_is_written_once(tmp_path):
    """The loop saves at an evaluation and again at a periodic or the final step: when two fall on one
    step, the second only moves the links (a rewrite would redo a whole checkpoint, replay included)."""
    checkpoints = RunCheckpoints(tmp_path, save_every=0)
    written = _save_steps(checkpoints, [(20, False), (20, True), (30, False)])
    assert written == ["step_000000020", "step_000000030"]
    assert (checkpoints.dir / "best").resolve().name == "step_000000020"


def test_an_evaluation_that_ties_the_best_moves_best_to_the_newer_policy(monkeypatch, tmp_path):
    _scripted_evaluations(monkeypatch, {100: -2.0, 200: -2.0})
    result = train(TrainConfig(steps=200, out=str(tmp_path / "run"), **{**TINY, "eval_every": 100}), progress=False)
    assert (result.run_dir / "checkpoints" / "best").resolve().name == "step_000000200"


def test_every_evaluation_replays_the_episodes_flowrl_eval_scores_with_the_run_seed(monkeypatch, tmp_path):
    """Evaluations at different steps start from the same states (so their returns compare), those
    of ``flowrl eval --seed <run seed>``: episode i resets with episode_seed(seed, i, stream 1)."""
    resets: list[int] = []
    original = loop.evaluate

    def recording(act_fn, env, episodes, seed=0, **kwargs):
        reset = env.reset

        def recorded_reset(seed=None):
            resets.append(seed)
            return reset(seed)

        env.reset = recorded_reset
        try:
            return original(act_fn, env, episodes, seed, **kwargs)
        finally:
            del env.reset  # the class's own again

    monkeypatch.setattr(loop, "evaluate", recording)
    cfg = TrainConfig(steps=100, out=str(tmp_path), **{**TINY, "seed": 4, "eval_every": 50, "save_every": 0})
    train(cfg, progress=False)
    assert resets == [episode_seed(4, 0, stream=EVAL_STREAM)] * 4  # 2 evaluations × (stochastic, zero noise)


def test_rows_of_rates_and_losses_start_with_the_first_update(tmp_path):
    """The warm-up (uniform random actions, no update) logs no loss-less rows; from the first update
    (step 150) every log_every-th step logs the losses and the rates."""
    config = {**TINY, "start_steps": 150, "log_every": 50, "eval_every": 0, "save_every": 0}
    result = train(TrainConfig(steps=250, out=str(tmp_path), **config), progress=False)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "charts/env_steps_per_s" in r]
    assert [r["step"] for r in logged] == [150, 200, 250]
    assert all("losses/q_pi_loss" in r and "losses/actor_loss" in r for r in logged)


RATES = {**TINY, "log_every": 50, "eval_every": 100, "save_every": 0}


def _timed_run(monkeypatch, step_s) -> None:
    """Run training on a clock where env step s takes ``step_s(s)`` seconds and an evaluation 100 s."""
    from types import SimpleNamespace

    from flowrl_deploy.train import logger as logger_module

    clock = [0.0]
    monkeypatch.setattr(logger_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))

    class TimedSteps(loop.Progress):
        def update(self, steps, updates, force=False):
            clock[0] += 0.0 if force else step_s(steps + 1)  # the time to the next step's row

    def slow_evaluation(agent, eval_env, cfg, step, deterministic=False, stop=None):
        clock[0] += 100.0
        return EvalResult.of([Episode(-1.0, 200, False)])

    monkeypatch.setattr(loop, "Progress", TimedSteps)
    monkeypatch.setattr(loop, "_evaluate", slow_evaluation)


def _rate_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "charts/env_steps_per_s" in r]


def test_the_logged_rates_cover_the_training_since_the_previous_row(monkeypatch, tmp_path):
    """On a clock where an env step takes 10 ms and an evaluation 100 s, every row after the first
    says 100 env steps/s (and 100 updates/s): the rates were averages since the start, evaluations
    included, so a slowdown (or a speedup) late in a run hardly moved them."""
    _timed_run(monkeypatch, lambda step: 0.01)
    result = train(TrainConfig(steps=400, out=str(tmp_path), **RATES), progress=False)
    logged = _rate_rows(result.run_dir)
    assert [r["step"] for r in logged] == [100, 150, 200, 250, 300, 350, 400]
    for row in logged[1:]:
        assert row["charts/env_steps_per_s"] == pytest.approx(100.0), row["step"]
        assert row["charts/updates_per_s"] == pytest.approx(100.0), row["step"]


def test_a_row_after_a_slowdown_gives_the_rate_since_the_previous_row(monkeypatch, tmp_path):
    """Steps 101-150 take 10 ms, 151-200 20 ms: the row at 200 says 50 steps/s, that of its own 50 steps."""
    _timed_run(monkeypatch, lambda step: 0.01 if step <= 150 else 0.02)
    result = train(TrainConfig(steps=200, out=str(tmp_path), **RATES), progress=False)
    assert [(r["step"], r["charts/env_steps_per_s"]) for r in _rate_rows(result.run_dir)][1:] == [
        (150, pytest.approx(100.0)),
        (200, pytest.approx(50.0)),
    ]


def test_the_first_rates_after_a_resume_count_only_the_steps_since_the_resume(monkeypatch, tmp_path):
    """A run resumed at step 200 whose steps take 10 ms says 100 steps/s, not (200 + 50) / 0.5 s."""
    _timed_run(monkeypatch, lambda step: 0.01)
    config = {**RATES, "save_replay": True}  # else the emptied buffer delays the first updates
    first = train(TrainConfig(steps=200, out=str(tmp_path / "run"), **config), progress=False)
    resumed = train(resume_config(first.run_dir, steps=300), resume=first.run_dir, progress=False)
    after = [r for r in _rate_rows(resumed.run_dir) if r["step"] > 200]
    assert after[0]["step"] == 250  # 50 steps in 0.49 s: step 201's time passes before the resumed run's clock starts
    assert after[0]["charts/env_steps_per_s"] == after[0]["charts/updates_per_s"] == pytest.approx(50 / 0.49)


def test_every_row_logged_after_the_first_actor_step_carries_the_actor_losses(tmp_path):
    """The actor steps on every 2nd update (policy_delay 2), the first at step 101; logging every
    50 steps from there falls on critic-only updates (steps 150, 200, 250), yet each row carries the
    latest actor losses."""
    config = {**TINY, "start_steps": 101, "log_every": 50, "eval_every": 0, "save_every": 0}
    result = train(TrainConfig(steps=250, out=str(tmp_path), **config), progress=False)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "charts/env_steps_per_s" in r]
    assert [r["step"] for r in logged] == [150, 200, 250]
    for key in ("losses/actor_loss", "losses/flow_matching_loss", "losses/flow_weight", "losses/q_pi_loss"):
        assert all(np.isfinite(r.get(key, np.nan)) for r in logged), key


def test_the_checkpoint_records_spec_config_and_counters(run):
    checkpoint = load_checkpoint(run.last_checkpoint, training_state=True)
    assert checkpoint.counters == {"env_steps": 400, "episodes": 2, "updates": 301}  # updates from step 100
    assert checkpoint.spec.env_id == "Pendulum-v1" and checkpoint.spec.hidden == 16
    assert checkpoint.spec.action_low == (-2.0,) and checkpoint.spec.flow_steps == 1
    assert checkpoint.config["cfm_weighting"] == "batch" and checkpoint.config["steps"] == 400
    assert "q_pi_target.net.0.weight" in checkpoint.training_tensors
    assert not checkpoint.replay  # not asked for


def recording_replay(monkeypatch) -> dict[str, list]:
    """Make training's replay buffer record each transition it stores (``added``: copies of the
    arguments of ``add``) and the age (0 = the newest transition) of each one its batches draw."""
    seen: dict[str, list] = {"added": [], "ages": []}

    class Recording(ReplayBuffer):
        def add(self, *transition) -> None:
            seen["added"].append(tuple(np.array(x, copy=True) for x in transition))
            super().add(*transition)

        def sample_indices(self, batch_size: int) -> np.ndarray:
            idx = super().sample_indices(batch_size)
            seen["ages"].append((self.pos - 1 - idx) % self.capacity)
            return idx

    monkeypatch.setattr(loop, "ReplayBuffer", Recording)
    return seen


def sampled_ages(monkeypatch, cfg: TrainConfig) -> np.ndarray:
    """Train ``cfg``; the age (0 = the newest transition) of every transition its batches drew."""
    seen = recording_replay(monkeypatch)
    train(cfg, progress=False)
    return np.concatenate(seen["ages"])


def test_consecutive_transitions_chain_within_an_episode(monkeypatch, tmp_path):
    """Each step acts on and stores the observation the previous step ended in (the policy's own
    steps too, from step 190); after the time limit (Pendulum: 200) the next episode starts from its reset."""
    seen = recording_replay(monkeypatch)
    config = {**TINY, "start_steps": 190, "eval_every": 0, "save_every": 0}
    train(TrainConfig(steps=210, out=str(tmp_path), **config), progress=False)
    obs, next_obs = (np.stack([transition[i] for transition in seen["added"]]) for i in (0, 3))
    assert len(obs) == 210
    for i in range(209):
        if i != 199:
            np.testing.assert_array_equal(obs[i + 1], next_obs[i], err_msg=f"step {i + 1}")
    assert not np.array_equal(obs[200], next_obs[199])  # a new episode, from its own reset
    assert len({row.tobytes() for row in obs[:200]}) == 200  # the pendulum moves: no observation repeats


def test_recent_fraction_one_draws_every_batch_from_the_recent_window(monkeypatch, tmp_path):
    config = {**TINY, "eval_every": 0, "save_every": 0}
    cfg = TrainConfig(steps=200, out=str(tmp_path), recent_fraction=1.0, recent_window=8, **config)
    ages = sampled_ages(monkeypatch, cfg)
    assert len(ages) == 101 * 16 and ages.max() < 8


def test_a_stop_during_the_update_of_an_evaluation_step_runs_no_evaluation(monkeypatch, tmp_path):
    """The stop came before the evaluation began: none of it runs (a 1-episode evaluation stopped
    after its first episode would be logged, and compared for `best`, as a whole one)."""
    evaluated = []

    def recorded_evaluation(agent, eval_env, cfg, step, deterministic=False, stop=None):
        evaluated.append(step)
        return EvalResult.of([Episode(-1.0, 200, False)])

    update = FlowRL.update

    def stopped_update(self, batch):
        signal.raise_signal(signal.SIGTERM)
        return update(self, batch)

    monkeypatch.setattr(loop, "_evaluate", recorded_evaluation)
    monkeypatch.setattr(FlowRL, "update", stopped_update)
    cfg = TrainConfig(steps=400, out=str(tmp_path / "run"), **{**TINY, "eval_every": 100})  # first update: step 100
    result = train(cfg, progress=False, stop_on_signal=True)
    assert result.interrupted and result.counters.env_steps == 100
    assert evaluated == []
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in rows if "charts/eval_return" in r]
    assert not (result.run_dir / "checkpoints" / "best").exists()


def test_the_logged_evaluation_length_and_fall_rate_are_those_of_the_sampled_policy(monkeypatch, tmp_path):
    """charts/eval_episode_length and charts/eval_terminated (the share of episodes the task ended) go
    with charts/eval_return, from the sampled evaluation, not from a0 = 0."""

    def lengths_by_kind(agent, eval_env, cfg, step, deterministic=False, stop=None):
        if deterministic:
            return EvalResult.of([Episode(-1.0, 200, False)] * 4)
        return EvalResult.of([Episode(-1.0, 100, True), *[Episode(-1.0, 100, False)] * 3])

    monkeypatch.setattr(loop, "_evaluate", lengths_by_kind)
    cfg = TrainConfig(steps=100, out=str(tmp_path / "run"), **{**TINY, "eval_every": 100, "save_every": 0})
    result = train(cfg, progress=False)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["charts/eval_episode_length"] for r in rows if "charts/eval_return" in r] == [100.0]
    assert [r["charts/eval_terminated"] for r in rows if "charts/eval_return" in r] == [0.25]


def test_recent_fraction_zero_samples_the_whole_buffer_uniformly(monkeypatch, tmp_path):
    """4,000 transitions, updates only at the end: the newest 2,048 (the default window) get their
    share of the batches, 51 %, not the 61 % that 20 % recent sampling would give them."""
    config = {**TINY, "batch_size": 256, "start_steps": 3990, "eval_every": 0, "save_every": 0}
    ages = sampled_ages(monkeypatch, TrainConfig(steps=4000, out=str(tmp_path), recent_fraction=0.0, **config))
    assert len(ages) == 11 * 256
    assert abs((ages < 2048).mean() - 2048 / 3995) < 0.04
    assert ages.max() > 3900  # the oldest transitions are drawn too


def test_each_evaluation_runs_a_zero_noise_and_a_freshly_seeded_stochastic_policy(monkeypatch, tmp_path):
    """``charts/eval_return_deterministic`` comes from a0 = 0 (what a ``--deterministic`` export
    serves); the stochastic evaluation at step s draws its noise from episode_seed(seed, s, stream 2),
    new at every evaluation and apart from the episodes' own seeds."""
    calls: list[tuple[int, bool]] = []
    original = loop.actor_act_fn

    def recording(actor, seed=0, num_steps=None, deterministic=False):
        calls.append((seed, deterministic))
        return original(actor, seed, num_steps, deterministic)

    monkeypatch.setattr(loop, "actor_act_fn", recording)
    cfg = TrainConfig(steps=100, out=str(tmp_path), **{**TINY, "seed": 4, "eval_every": 50, "save_every": 0})
    train(cfg, progress=False)
    evaluations = [sorted(calls[:2], key=lambda call: call[1]), sorted(calls[2:], key=lambda call: call[1])]
    assert len(calls) == 4 and [[d for _, d in pair] for pair in evaluations] == [[False, True]] * 2
    stochastic = [pair[0][0] for pair in evaluations]
    assert stochastic == [episode_seed(4, step, stream=EVAL_NOISE_STREAM) for step in (50, 100)]
    assert len(set(stochastic)) == 2 and EVAL_NOISE_STREAM not in (0, EVAL_STREAM)


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


def test_acting_integrates_the_seeded_noise_with_the_asked_flow_steps(run):
    """What ``flowrl eval --flow-steps N`` acts with: the actor at N steps from the seed's noise."""
    obs = np.array([1.0, 0.0, 0.5], np.float32)
    actor = load_actor(run.run_dir, "cpu")
    noise = torch.from_numpy(draw_noise(session_noise(3), 1, 1))  # SeededPolicy's draw, as an export's eval
    with torch.no_grad():
        expected = {n: actor(torch.as_tensor(obs)[None], noise, num_steps=n)[0].numpy() for n in (1, 5)}
    assert not np.allclose(expected[1], expected[5], rtol=0, atol=1e-4)  # N matters for this policy
    for flow_steps, n in ((None, 1), (1, 1), (5, 5)):  # None: the checkpoint's own N = 1
        act = checkpoint_act_fn(run.run_dir, flow_steps=flow_steps, device="cpu", seed=3)
        np.testing.assert_allclose(act(obs), expected[n], rtol=1e-6, err_msg=f"flow_steps={flow_steps}")


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
    # the buffer restarts empty at step 200 and updates wait for --start-steps (100) transitions: at step 300
    assert counters["updates"] == 101 + 1


def test_resuming_a_finished_run_is_refused_before_any_file_changes(run, tmp_path):
    """A run resumed at its own --steps took no step but rewrote config.json and the metrics files and
    added an empty TensorBoard event file: refused instead, naming the field (a library caller)."""
    import shutil

    copy = shutil.copytree(run.run_dir, tmp_path / "copy", symlinks=True)
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in copy.rglob("*") if p.is_file()}
    message = f"{copy} already finished at 400 env steps (steps 400); pass a larger steps to extend it"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        train(resume_config(copy, steps=400), resume=copy, progress=False)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in copy.rglob("*") if p.is_file()} == files


def test_resuming_under_another_config_is_refused_by_field_before_any_file_changes(run, tmp_path):
    """A library caller resuming with a config of its own (another width, learning rate or save period)
    trained under it and overwrote the run's config.json: train() refuses it, naming the fields (not
    flowrl train's flags), and takes the RESUME_OVERRIDES, another spelling of its env id and any cfg.out
    (the run stays in its directory)."""
    import shutil

    copy = shutil.copytree(run.run_dir, tmp_path / "copy", symlinks=True)
    files = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    saved = resume_config(copy, steps=400)
    for changes, named in (({"lr": 1e-3}, "lr"), ({"hidden": 8, "save_every": 100}, "hidden, save_every")):
        with pytest.raises(ConfigError, match=f"^{named} cannot change when resuming: the run keeps its saved") as err:
            train(saved.override(**changes), resume=copy, progress=False)
        assert "--" not in str(err.value)  # a library caller gave fields, not flags
        assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == files
    elsewhere = tmp_path / "elsewhere"
    allowed = saved.override(
        steps=420, log_every=10, eval_every=0, device="cpu", out=str(elsewhere), env="gym:Pendulum-v1"
    )
    resumed = train(allowed, resume=copy, progress=False)
    assert resumed.run_dir == copy and resumed.counters.env_steps == 420 and not elsewhere.exists()
    # the copy records where it lies (not the original's out, nor cfg.out), and the env id as saved
    for config in (json.loads((copy / "config.json").read_text()), read_document(resumed.last_checkpoint)["config"]):
        assert (config["out"], config["env"]) == (str(copy.resolve()), "Pendulum-v1")


def test_a_resume_whose_actor_weights_do_not_fit_names_the_checkpoint(run, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    copy = shutil.copytree(run.run_dir, tmp_path / "copy", symlinks=True)
    model = copy / "checkpoints" / "last" / "model.safetensors"
    tensors = load_file(str(model))
    dropped = sorted(tensors)[-1]
    del tensors[dropped]
    save_file(tensors, str(model))
    last = (copy / "checkpoints" / "last").resolve()
    with pytest.raises(CheckpointError, match=f"^{last}: the actor weights do not match its spec: .*{dropped}"):
        train(resume_config(copy, steps=500), resume=copy, progress=False)


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


def test_resuming_corrupt_actor_weights_is_a_clear_error_that_changes_no_file(run, tmp_path):
    """Every checkpoint's weights damaged: nothing to fall back to (tests/train/test_damaged_checkpoints.py)."""
    import shutil

    copy = shutil.copytree(run.run_dir, tmp_path / "copy", symlinks=True)
    for weights in (copy / "checkpoints").glob("step_*/model.safetensors"):
        weights.write_bytes(b"\x00garbage")
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    message = (
        f"{copy / 'checkpoints'} holds no intact checkpoint to resume (step_000000400: model.safetensors has no "
        "valid header (zeroed or overwritten?); step_000000200: model.safetensors has no valid header"
    )
    with pytest.raises(CheckpointError, match=f"^{re.escape(message)}"):
        train(TrainConfig(steps=500, out=str(copy), **TINY), resume=copy, progress=False)
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


def test_a_new_run_refuses_to_mix_into_an_existing_one(run):
    with pytest.raises(FlowRLError, match="--resume"):
        train(TrainConfig(steps=10, out=str(run.run_dir), **TINY), progress=False)


@pytest.fixture
def recorded_envs(monkeypatch):
    """The envs a run makes, in order, each recording its seed and whether it was closed."""
    made = []
    real_make_env = loop.make_env

    def make_env(env_id, seed):
        env = real_make_env(env_id, seed)
        env.seed, env.closed, close = seed, False, env.close

        def recorded_close():
            env.closed = True
            close()

        env.close = recorded_close
        made.append(env)
        return env

    monkeypatch.setattr(loop, "make_env", make_env)
    return made


def test_envs_are_closed_when_the_first_reset_fails(tmp_path, monkeypatch, recorded_envs):
    def failing_reset(seed=None):  # a simulator that cannot load its model
        raise FlowRLError("the simulator failed to reset")

    recording = loop.make_env

    def make_env(env_id, seed):
        env = recording(env_id, seed)
        if len(recorded_envs) == 1:  # the training env
            env.reset = failing_reset
        return env

    monkeypatch.setattr(loop, "make_env", make_env)
    with pytest.raises(FlowRLError, match="the simulator failed to reset"):
        train(TrainConfig(steps=10, out=str(tmp_path / "run"), **TINY), progress=False)
    assert [env.closed for env in recorded_envs] == [True, True]


def test_a_refusal_after_the_envs_are_made_closes_both(tmp_path, monkeypatch, recorded_envs):
    monkeypatch.setattr(loop, "memory_shortfall", lambda spec, cfg, device: "more than this machine has")
    with pytest.raises(ConfigError, match="need more than this machine has"):
        train(TrainConfig(steps=10, seed=7, out=str(tmp_path / "run"), **TINY), progress=False)
    assert [(env.seed, env.closed) for env in recorded_envs] == [(7, True), (8, True)]  # evaluation: seed + 1


def test_a_checkpoint_without_counters_is_a_clear_error_on_resume(run, tmp_path):
    """The finished-run check read counters["env_steps"] and raised KeyError (a traceback in flowrl train)."""
    import shutil

    copy = shutil.copytree(run.run_dir, tmp_path / "copy", symlinks=True)
    document = (copy / "checkpoints" / "last").resolve() / "checkpoint.json"
    data = json.loads(document.read_text())
    del data["counters"]
    document.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="training state is incomplete or malformed"):
        train(resume_config(copy, steps=500), resume=copy, progress=False)


def test_a_stop_before_the_first_step_writes_no_checkpoint(tmp_path):
    cfg = TrainConfig(steps=200, out=str(tmp_path / "run"), **TINY)
    result = train(cfg, progress=False, stop_on_signal=True, on_start=lambda: signal.raise_signal(signal.SIGINT))
    assert result.interrupted and result.counters.env_steps == 0
    assert result.last_checkpoint is None
    assert not list((tmp_path / "run" / "checkpoints").glob("step_*"))


@pytest.mark.parametrize("stopped_in", ["sampled", "from zero"])
def test_a_stop_during_an_evaluation_ends_it_after_the_current_episode_unlogged(monkeypatch, tmp_path, stopped_in):
    """SIGTERM waited out a whole evaluation (19 s on h1-crawl; schedulers often grant 30 s): now the
    evaluation (sampled noise, then from a0 = 0) ends after its current episode, and that partial
    evaluation is neither logged nor `best`."""
    acts = {"sampled": 0, "from zero": 0}

    def counting_act_fn(actor, seed, flow_steps=None, deterministic=False):
        act, kind = actor_act_fn(actor, seed, flow_steps, deterministic), "from zero" if deterministic else "sampled"

        def counted(obs):
            acts[kind] += 1
            if kind == stopped_in and acts[kind] == 10:
                signal.raise_signal(signal.SIGTERM)
            return act(obs)

        return counted

    monkeypatch.setattr(loop, "actor_act_fn", counting_act_fn)
    cfg = TrainConfig(steps=400, out=str(tmp_path / "run"), **{**TINY, "eval_episodes": 3})
    result = train(cfg, progress=False, stop_on_signal=True)
    assert result.interrupted and result.stop_signal == signal.SIGTERM and result.counters.env_steps == 200
    episodes = {kind: n / 200 for kind, n in acts.items()}  # Pendulum: 200 steps an episode
    assert episodes == ({"sampled": 1, "from zero": 0} if stopped_in == "sampled" else {"sampled": 3, "from zero": 1})
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in rows if "charts/eval_return" in r]
    checkpoints = result.run_dir / "checkpoints"
    assert not (checkpoints / "best").exists() and (checkpoints / "last").resolve().name == "step_000000200"
    assert read_document(checkpoints / "last")["eval"] == {"best_return": None, "last_return": None, "last_step": None}
