"""A simulation that blows up (dm_control's PhysicsError, a NaN observation or reward) ends its episode:
training drops that step and goes on, evaluations and the control loop count the episode as cut short."""

from __future__ import annotations

import json
import logging

import gymnasium as gym
import numpy as np
import pytest

from flowrl_deploy.checkpoint import load_checkpoint
from flowrl_deploy.errors import FlowRLError, SimulationError
from flowrl_deploy.train import loop
from flowrl_deploy.train.config import TrainConfig
from flowrl_deploy.train.control import _control_episode, _TickClock
from flowrl_deploy.train.envs import make_env
from flowrl_deploy.train.evaluate import EvalResult, evaluate


class BlowingUpEnv(gym.Env):
    """Five-step episodes, each step's reward 1, whose steps numbered in ``blow_up_at`` (counted over the
    instance's life, from 1), or every step if it is None, return ``bad``."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    blow_up_at: frozenset[int] | None = frozenset()
    bad = "nan obs"

    def __init__(self, render_mode=None):
        self.render_mode, self.calls = render_mode, 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2), {}

    def step(self, action):
        self.calls += 1
        obs, reward = np.zeros(2), 1.0
        if self.blow_up_at is None or self.calls in self.blow_up_at:
            if self.bad == "nan obs":
                obs[1] = np.nan
            elif self.bad == "huge obs":
                obs[0] = 1e39  # finite in float64, infinite in float32
            else:
                reward = np.inf
        return obs, reward, False, False, {}


gym.register("FlowRLTestBlowingUp-v0", entry_point=BlowingUpEnv, max_episode_steps=5)
ENV = "FlowRLTestBlowingUp-v0"


@pytest.fixture
def blowing_up(monkeypatch):
    def set_(at=(), bad="nan obs"):
        monkeypatch.setattr(BlowingUpEnv, "blow_up_at", None if at is None else frozenset(at))
        monkeypatch.setattr(BlowingUpEnv, "bad", bad)

    return set_


def _config(tmp_path, steps: int) -> TrainConfig:
    return TrainConfig(env=ENV, steps=steps, start_steps=steps, hidden=8, batch_size=8, eval_every=0,
                       save_replay=True, save_every=0, out=str(tmp_path / "run"), threads=1)  # fmt: skip


@pytest.mark.parametrize("bad", ["nan obs", "huge obs", "inf reward"])
def test_a_step_with_a_nan_or_infinite_value_raises_a_simulation_error_naming_it(blowing_up, bad):
    blowing_up(at={2}, bad=bad)
    env = make_env(ENV)
    try:
        env.reset(0)
        env.step(np.zeros(1, np.float32))
        with pytest.raises(SimulationError) as raised:
            env.step(np.zeros(1, np.float32))
    finally:
        env.close()
    what = "a reward of inf" if bad == "inf reward" else "an observation with 1 of its 2 values NaN or infinite"
    assert str(raised.value) == f"{ENV} returned {what}"


def test_a_dm_control_physics_error_is_a_simulation_error_and_a_reset_recovers():
    env = make_env("dmc:cartpole-swingup", 0)
    try:
        env.reset(1)
        env._env.physics.data.qvel[:] = 1e30  # MuJoCo flags the state as unstable at the next step
        with pytest.raises(SimulationError, match=r"^dmc:cartpole-swingup: the simulation became unstable \(.*mjWARN"):
            env.step(np.zeros(1))
        obs = env.reset(2)
        next_obs, reward, _, _ = env.step(np.zeros(1))
    finally:
        env.close()
    assert np.isfinite(obs).all() and np.isfinite(next_obs).all() and np.isfinite(reward)


def test_training_drops_the_failed_step_logs_the_cut_episode_and_goes_on(blowing_up, tmp_path, caplog):
    # calls 7 and 8: step 2 of episode 2, then step 1 of episode 3 (right after its reset)
    blowing_up(at={7, 8})
    with caplog.at_level(logging.WARNING, logger="flowrl.train"):
        result = loop.train(_config(tmp_path, 20), progress=False)
    assert result.counters.env_steps == 20
    replay = load_checkpoint(result.last_checkpoint, training_state=True).replay
    assert np.isfinite(replay["next_obs"]).all() and np.isfinite(replay["obs"]).all()
    assert len(replay["reward"]) == 20  # every stored step is a good one: the two failed ones are not among them
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    episodes = [(r["step"], r["charts/episode_length"], r["charts/episode_unstable"]) for r in rows]
    assert episodes == [(5, 5, 0.0), (6, 1, 1.0), (6, 0, 1.0), (11, 5, 0.0), (16, 5, 0.0)]
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2
    assert warnings[0] == (
        f"episode 2 cut short after 1 steps, at env step 6: {ENV} returned an observation with 1 of its 2 values "
        "NaN or infinite; the failed step is not stored, and the env was reset"
    )
    assert warnings[1].startswith("episode 3 cut short after 0 steps, at env step 6: ")
    assert result.counters.episodes == 5


def test_training_stops_after_ten_cut_episodes_in_a_row_naming_its_last_checkpoint(blowing_up, tmp_path):
    blowing_up(at=None)
    with pytest.raises(FlowRLError) as raised:
        loop.train(_config(tmp_path, 20), progress=False)
    assert str(raised.value).startswith(
        f"the simulation became unstable in {loop.MAX_UNSTABLE_IN_A_ROW} episodes in a row, the last at env step 0 "
    )
    assert str(raised.value).endswith(
        "the task cannot be trained on as it is; training stopped at env step 0, and no checkpoint was saved"
    )


def test_an_episode_that_ends_normally_restarts_the_count_of_cut_episodes_in_a_row(blowing_up, tmp_path):
    # nine cut episodes in a row (calls 6-14, each the first step after a reset), a whole episode, nine more
    first, second = range(6, 6 + 9), range(6 + 9 + 5, 6 + 9 + 5 + 9)
    blowing_up(at={*first, *second})
    result = loop.train(_config(tmp_path, 20), progress=False)
    assert result.counters.env_steps == 20
    assert result.counters.episodes == 4 + 9 + 9


def test_an_evaluation_in_training_logs_the_share_of_cut_episodes_and_warns(blowing_up, tmp_path, caplog):
    # call 3 of each instance: training's third step, and the third of the evaluation's first episode
    blowing_up(at={3})
    cfg = _config(tmp_path, 10).override(eval_every=10, eval_episodes=2)
    with caplog.at_level(logging.WARNING, logger="flowrl.train"):
        result = loop.train(cfg, progress=False)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluation = next(r for r in rows if "charts/eval_return" in r)
    assert (evaluation["step"], evaluation["charts/eval_unstable"], evaluation["charts/eval_return"]) == (10, 0.5, 3.5)
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluation")] == [
        f"evaluation at env step 10: 1 of 2 episodes was cut short by an unstable simulation: {ENV} returned an "
        "observation with 1 of its 2 values NaN or infinite"
    ]


def test_an_evaluation_counts_a_cut_episode_with_the_return_of_its_steps_before(blowing_up):
    blowing_up(at={8})  # step 3 of episode 2
    result = evaluate(lambda obs: np.zeros(1, np.float32), ENV, episodes=3)
    assert result.returns == (5.0, 2.0, 5.0)
    assert result.lengths == (5, 2, 5)
    reason = f"{ENV} returned an observation with 1 of its 2 values NaN or infinite"
    assert result.unstable == ("", reason, "")
    assert result.lengths_summary() == (
        "length 4 ± 1 steps, 0 of 3 ended by termination, 1 of 3 cut short by an unstable simulation"
    )
    assert result.unstable_note() == f"1 of 3 episodes was cut short by an unstable simulation: {reason}"
    assert EvalResult(5.0, 0.0, (5.0,), (5,), (False,), ("",)).unstable_note() == ""


def test_the_control_loop_ends_an_episode_the_simulation_cannot_go_on_from(blowing_up):
    blowing_up(at={3})
    env = make_env(ENV)
    try:
        episode = _control_episode(env, env.reset(0), lambda obs: np.zeros(1, np.float32), _TickClock(1e-4), None)
    finally:
        env.close()
    assert (episode.total, episode.length, episode.terminated) == (2.0, 2, False)
    assert episode.unstable == f"{ENV} returned an observation with 1 of its 2 values NaN or infinite"


def test_flowrl_train_prints_each_cut_episode_as_it_happens_and_flowrl_eval_counts_them(blowing_up, tmp_path):
    from typer.testing import CliRunner

    from flowrl_deploy.cli import app

    blowing_up(at={7})
    out = tmp_path / "run"
    flags = ["--steps", "20", "--start-steps", "20", "--hidden", "8", "--batch-size", "8", "--eval-every", "0",
             "--threads", "1", "--no-progress", "--out", str(out)]  # fmt: skip
    trained = CliRunner().invoke(app, ["train", "--env", ENV, *flags])
    assert trained.exit_code == 0, trained.output
    assert trained.stderr == (
        f"warning: episode 2 cut short after 1 steps, at env step 6: {ENV} returned an observation with 1 of its 2 "
        "values NaN or infinite; the failed step is not stored, and the env was reset\n"
    )
    assert trained.stdout.startswith("trained 20 env steps")
    blowing_up(at={3})
    evaluated = CliRunner().invoke(app, ["eval", str(out), "--episodes", "2"])
    assert evaluated.exit_code == 0, evaluated.output
    assert evaluated.stdout.startswith(f"{ENV}: return 3.50 ± 1.50 over 2 episodes")
    assert evaluated.stdout.rstrip().endswith(", 1 of 2 cut short by an unstable simulation")
    assert evaluated.stderr == (
        f"warning: 1 of 2 episodes was cut short by an unstable simulation: {ENV} returned an observation with 1 of "
        "its 2 values NaN or infinite\n"
    )
