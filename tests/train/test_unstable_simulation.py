"""A simulation that blows up (dm_control's PhysicsError, MuJoCo's warnings of an unstable state, a NaN
observation or reward) ends its episode: training drops that step and goes on, evaluations and the
control loop count the episode as cut short."""

from __future__ import annotations

import json
import logging
import shutil
import warnings

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from dm_control.rl import control as dm_control_env

from flowrl_deploy.checkpoint import load_checkpoint
from flowrl_deploy.errors import FlowRLError, SimulationError
from flowrl_deploy.train import loop, resume_config
from flowrl_deploy.train.config import TrainConfig
from flowrl_deploy.train.control import _control_episode, _TickClock
from flowrl_deploy.train.envs import make_env
from flowrl_deploy.train.evaluate import EvalResult, evaluate

NAN_OBS = "an observation with 1 of its 2 values NaN or infinite"


class BlowingUpEnv(gym.Env):
    """Five-step episodes, each step's reward ``reward``. The steps numbered in ``blow_up_at`` (counted over
    the instance's life, from 1), or every step if it is None, return ``bad``; the resets numbered in
    ``bad_resets`` (from 1: the first is GymEnv's own, as it is made) a NaN observation."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    blow_up_at: frozenset[int] | None = frozenset()
    bad_resets: frozenset[int] = frozenset()
    bad = "nan obs"
    reward = 1.0

    def __init__(self, render_mode=None):
        self.render_mode, self.steps, self.resets = render_mode, 0, 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.resets += 1
        return np.array([0.0, np.nan if self.resets in self.bad_resets else 0.0]), {}

    def step(self, action):
        self.steps += 1
        obs, reward = np.zeros(2), self.reward
        if self.blow_up_at is None or self.steps in self.blow_up_at:
            if self.bad == "nan obs":
                obs[1] = np.nan
            elif self.bad == "huge obs":
                obs[0] = 1e39  # finite in float64, infinite in float32
            else:
                reward = np.inf if self.bad == "inf reward" else 1e39
        return obs, reward, False, False, {}


class MujocoBall(gym.Env):
    """A free ball in MuJoCo, as gymnasium's MuJoCo tasks hold it (``data``): the steps numbered in ``blow_up_at``
    (over the instance's life, from 1) start from a NaN velocity, which ``mj_step`` finds and resets by itself,
    every value finite after it. ``reset_data``: whether a reset clears MuJoCo's data (its warning counts
    too) with mj_resetData, as gymnasium's tasks do, or only sets the joints, as a task of one's own may.
    The resets numbered in ``settle_through_nan`` (from 1: the first is GymEnv's own) settle the initial
    state with a step from a NaN velocity, as a task that settles a random pose may meet one."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (13,), np.float64)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    blow_up_at = frozenset({2})
    reset_data = True
    settle_through_nan: frozenset[int] = frozenset()

    def __init__(self, render_mode=None):
        self.model = mujoco.MjModel.from_xml_string(
            '<mujoco><worldbody><body pos="0 0 1"><freejoint/><geom size=".1"/></body></worldbody></mujoco>'
        )
        self.data, self.render_mode, self.steps, self.resets = mujoco.MjData(self.model), render_mode, 0, 0

    def _obs(self):
        return np.concatenate([self.data.qpos, self.data.qvel])

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        if self.reset_data:
            mujoco.mj_resetData(self.model, self.data)
        else:
            self.data.qpos[:], self.data.qvel[:] = self.model.qpos0, 0.0
            mujoco.mj_forward(self.model, self.data)
        self.resets += 1
        if self.resets in self.settle_through_nan:
            self.data.qvel[:] = np.nan
            mujoco.mj_step(self.model, self.data)
        return self._obs(), {}

    def step(self, action):
        self.steps += 1
        if self.steps in self.blow_up_at:
            self.data.qvel[:] = np.nan
        mujoco.mj_step(self.model, self.data)
        return self._obs(), 1.0, False, False, {}


gym.register("FlowRLTestBlowingUp-v0", entry_point=BlowingUpEnv, max_episode_steps=5)
gym.register("FlowRLTestMujocoBall-v0", entry_point=MujocoBall, max_episode_steps=5)
ENV = "FlowRLTestBlowingUp-v0"


@pytest.fixture
def blowing_up(monkeypatch):
    def set_(at=(), bad="nan obs", resets=(), reward=1.0):
        monkeypatch.setattr(BlowingUpEnv, "blow_up_at", None if at is None else frozenset(at))
        monkeypatch.setattr(BlowingUpEnv, "bad", bad)
        monkeypatch.setattr(BlowingUpEnv, "bad_resets", frozenset(resets))
        monkeypatch.setattr(BlowingUpEnv, "reward", reward)

    return set_


def _config(tmp_path, steps: int, **changes) -> TrainConfig:
    fields = dict(env=ENV, steps=steps, start_steps=steps, hidden=8, batch_size=8, eval_every=0, save_replay=True,
                  save_every=0, out=str(tmp_path / "run"), threads=1)  # fmt: skip
    return TrainConfig(**(fields | changes))


def _episode_rows(result) -> list[tuple[int, int, float]]:
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["charts/episode_length"], r["charts/episode_unstable"]) for r in rows if "step" in r and
            "charts/episode_length" in r]  # fmt: skip


@pytest.mark.parametrize(
    "bad, what",
    [
        ("nan obs", NAN_OBS),
        ("huge obs", NAN_OBS),  # 1e39 is finite in float64, infinite in float32
        ("inf reward", "a reward of inf"),
        ("huge reward", "a reward of 1e+39"),  # the replay stores float32 rewards
    ],
)
def test_a_step_with_a_nan_or_infinite_value_raises_a_simulation_error_naming_it(blowing_up, bad, what):
    blowing_up(at={2}, bad=bad)
    env = make_env(ENV)
    try:
        env.reset(0)
        env.step(np.zeros(1, np.float32))
        with pytest.raises(SimulationError) as raised, warnings.catch_warnings():
            warnings.simplefilter("error")  # no "overflow encountered in cast" on the user's terminal
            env.step(np.zeros(1, np.float32))
    finally:
        env.close()
    assert str(raised.value) == f"{ENV}'s step returned {what}"


def test_a_reset_with_a_nan_observation_raises_a_simulation_error(blowing_up):
    blowing_up(resets={2})
    env = make_env(ENV)
    try:
        with pytest.raises(SimulationError, match=rf"^{ENV}'s reset returned {NAN_OBS}$"):
            env.reset(0)
        assert np.isfinite(env.reset(1)).all()
    finally:
        env.close()


def test_a_dm_control_physics_error_is_a_simulation_error_and_a_reset_recovers(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # MuJoCo writes its warnings to MUJOCO_LOG.TXT there
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


def test_a_dm_control_physics_error_in_a_reset_is_a_simulation_error(monkeypatch):
    env = make_env("dmc:cartpole-swingup", 0)
    try:

        def invalid():
            raise dm_control_env.PhysicsError("Physics state is invalid. Warning(s) raised: mjWARN_BADQACC")

        monkeypatch.setattr(env._env, "reset", invalid)
        with pytest.raises(SimulationError, match=r"^dmc:cartpole-swingup: the simulation became unstable \(Phys"):
            env.reset(1)
    finally:
        env.close()


@pytest.mark.parametrize("reset_data", [True, False])
def test_a_gym_mujoco_task_whose_state_mujoco_reset_by_itself_raises_a_simulation_error(
    monkeypatch, tmp_path, reset_data
):
    """MuJoCo resets a NaN state in mj_step and goes on, every value finite: its warning counts tell, each time,
    also where the task's reset leaves them as they were (a count of 1 after the first blow-up and the second)."""
    monkeypatch.chdir(tmp_path)  # MuJoCo writes its warnings to MUJOCO_LOG.TXT there
    monkeypatch.setattr(MujocoBall, "blow_up_at", frozenset({2, 5}))
    monkeypatch.setattr(MujocoBall, "reset_data", reset_data)
    env = make_env("FlowRLTestMujocoBall-v0")
    failed = []
    try:
        for episode in range(2):
            env.reset(episode)
            try:
                for _ in range(3):
                    obs, *_ = env.step(np.zeros(1, np.float32))
                    assert np.isfinite(obs).all()
            except SimulationError as exc:
                failed.append(str(exc))
    finally:
        env.close()
    assert (
        failed
        == [
            "FlowRLTestMujocoBall-v0: the simulation became unstable (MuJoCo warned mjWARN_BADQVEL and reset its state)"
        ]
        * 2
    )


def test_training_drops_the_failed_step_logs_the_cut_episode_and_goes_on(blowing_up, tmp_path, caplog):
    # steps 7 and 8: step 2 of episode 2, then step 1 of episode 3 (right after its reset)
    blowing_up(at={7, 8})
    with caplog.at_level(logging.WARNING, logger="flowrl.train"):
        result = loop.train(_config(tmp_path, 20), progress=False)
    assert result.counters.env_steps == 20
    replay = load_checkpoint(result.last_checkpoint, training_state=True).replay
    assert np.isfinite(replay["next_obs"]).all() and np.isfinite(replay["obs"]).all()
    assert len(replay["reward"]) == 20  # every stored step is a good one: the two failed ones are not among them
    assert _episode_rows(result) == [(5, 5, 0.0), (6, 1, 1.0), (6, 0, 1.0), (11, 5, 0.0), (16, 5, 0.0)]
    assert [record.getMessage() for record in caplog.records] == [
        f"episode 2 cut short after 1 step, at env step 6: {ENV}'s step returned {NAN_OBS}",
        f"episode 3 cut short after 0 steps, at env step 6: {ENV}'s step returned {NAN_OBS}",
    ]
    assert result.counters.episodes == 5


def test_a_resume_from_a_save_just_before_a_cut_episode_drops_that_episode_s_row(blowing_up, tmp_path):
    # saved at step 5; the next episode is cut at its first step, logged at step 5 after the save
    blowing_up(at={6})
    run = loop.train(_config(tmp_path, 10, save_every=5), progress=False)
    assert _episode_rows(run) == [(5, 5, 0.0), (5, 0, 1.0), (10, 5, 0.0)] and run.counters.episodes == 3
    branch = shutil.copytree(run.run_dir, tmp_path / "branch", symlinks=True)  # the crash's stand-in: redo 6-10
    shutil.rmtree(branch / "checkpoints" / "step_000000010")
    blowing_up(at=())
    start = branch / "checkpoints" / "step_000000005"
    resumed = loop.train(resume_config(start, steps=10), resume=start, progress=False)
    assert resumed.counters.episodes == 2
    assert _episode_rows(resumed) == [(5, 5, 0.0), (10, 5, 0.0)]  # one row per episode the run counts


def test_a_step_that_fails_after_the_warm_up_is_dropped_as_well(blowing_up, tmp_path):
    blowing_up(at={13})  # step 3 of episode 3, with the policy acting and updates running since step 10
    result = loop.train(_config(tmp_path, 20, start_steps=10), progress=False)
    assert result.counters.env_steps == 20 and result.counters.episodes == 4
    replay = load_checkpoint(result.last_checkpoint, training_state=True).replay
    assert np.isfinite(replay["next_obs"]).all() and len(replay["reward"]) == 20
    assert (12, 2, 1.0) in _episode_rows(result)


def test_a_reset_with_a_nan_observation_ends_its_episode_before_its_first_step(blowing_up, tmp_path, caplog):
    blowing_up(resets={3})  # 1: GymEnv's own, 2: episode 1's, 3: episode 2's
    with caplog.at_level(logging.WARNING, logger="flowrl.train"):
        result = loop.train(_config(tmp_path, 10), progress=False)
    replay = load_checkpoint(result.last_checkpoint, training_state=True).replay
    assert np.isfinite(replay["obs"]).all() and len(replay["reward"]) == 10
    assert _episode_rows(result) == [(5, 5, 0.0), (5, 0, 1.0), (10, 5, 0.0)]
    assert [record.getMessage() for record in caplog.records] == [
        f"episode 2 cut short after 0 steps, at env step 5: {ENV}'s reset returned {NAN_OBS}"
    ]


def test_training_stops_after_ten_episodes_in_a_row_cut_before_their_first_step_and_saves_first(blowing_up, tmp_path):
    blowing_up(at=range(8, 1000))  # episode 2 stores 2 steps; every episode after it fails at its first
    with pytest.raises(FlowRLError) as raised:
        loop.train(_config(tmp_path, 50), progress=False)
    saved = tmp_path / "run" / "checkpoints" / "step_000000007"
    assert str(raised.value) == (
        f"the simulation became unstable before the first step of {loop.MAX_UNSTABLE_IN_A_ROW} episodes in a row, "
        f"the last at env step 7 ({ENV}'s step returned {NAN_OBS}): the task cannot be trained on as it is; "
        f"training stopped at env step 7, and the last checkpoint saved is {saved}"
    )
    assert (tmp_path / "run" / "checkpoints" / "last").resolve() == saved.resolve()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(row.get("charts/episode_unstable", 0.0) for row in rows) == 1 + loop.MAX_UNSTABLE_IN_A_ROW


def test_episodes_cut_after_a_stored_step_never_stop_a_run(blowing_up, tmp_path):
    blowing_up(at=range(3, 1000, 3))  # every episode stores 2 steps, then fails
    result = loop.train(_config(tmp_path, 40), progress=False)
    assert result.counters.env_steps == 40 and result.counters.episodes == 19  # the 20th was running at the end


def test_an_episode_that_ends_normally_restarts_the_count_of_cut_episodes_in_a_row(blowing_up, tmp_path):
    # nine episodes in a row cut at their first step (steps 6-14), a whole episode, nine more
    first, second = range(6, 6 + 9), range(6 + 9 + 5, 6 + 9 + 5 + 9)
    blowing_up(at={*first, *second})
    result = loop.train(_config(tmp_path, 20), progress=False)
    assert result.counters.env_steps == 20
    assert result.counters.episodes == 4 + 9 + 9


@pytest.mark.parametrize("failing, label, share", [(3, "", 0.5), (13, " from a0 = 0", 0.0)])
def test_an_evaluation_in_training_logs_the_share_of_cut_episodes_and_warns(
    blowing_up, tmp_path, caplog, failing, label, share
):
    # each instance's step 3 or 13: the sampled evaluation's first episode (training's env, which fails at
    # its step 3 too, goes on), or the zero-noise one's first (training's env takes 10 steps only)
    blowing_up(at={failing})
    cfg = _config(tmp_path, 10, eval_every=10, eval_episodes=2)
    with caplog.at_level(logging.WARNING, logger="flowrl.train"):
        result = loop.train(cfg, progress=False)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluation = next(r for r in rows if "charts/eval_return" in r)
    assert (evaluation["step"], evaluation["charts/eval_unstable"]) == (10, share)
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluation")] == [
        f"evaluation at env step 10{label}: 1 of 2 episodes was cut short by an unstable simulation: {ENV}'s step "
        f"returned {NAN_OBS}"
    ]


@pytest.mark.parametrize(
    "failing, returns",
    [
        (12, [(5, -5.0), (10, -1.0)]),  # the second sampled evaluation's step 2: its mean -1 beats -5
        (17, [(5, -5.0), (10, -5.0)]),  # the second zero-noise one's: a tie, which otherwise moves best
    ],
)
def test_an_evaluation_with_a_cut_episode_in_either_pass_never_makes_its_checkpoint_best(
    blowing_up, tmp_path, failing, returns
):
    """With rewards of -1 a step, an episode cut after 1 step returns more than a whole one (-5)."""
    blowing_up(at={failing}, reward=-1.0)  # the evaluation env's steps: 1-5 and 6-10 at step 5, 11-20 at 10
    result = loop.train(_config(tmp_path, 10, eval_every=5, eval_episodes=1), progress=False)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["charts/eval_return"]) for r in rows if "charts/eval_return" in r] == returns
    assert result.counters.best_eval_return == -5.0
    assert (result.run_dir / "checkpoints" / "best").resolve().name == "step_000000005"


def test_an_evaluation_counts_a_cut_episode_with_the_return_of_its_steps_before(blowing_up):
    blowing_up(at={8}, resets={4})  # step 3 of episode 2; episode 3's reset (the first is GymEnv's own)
    result = evaluate(lambda obs: np.zeros(1, np.float32), ENV, episodes=4)
    assert result.returns == (5.0, 2.0, 0.0, 5.0)
    assert result.lengths == (5, 2, 0, 5)
    assert result.unstable == ("", f"{ENV}'s step returned {NAN_OBS}", f"{ENV}'s reset returned {NAN_OBS}", "")
    assert result.lengths_summary() == (
        "length 3 ± 2 steps, 0 of 4 ended by termination, 2 of 4 cut short by an unstable simulation"
    )
    assert result.unstable_note() == (
        f"2 of 4 episodes were cut short by an unstable simulation: {ENV}'s step returned {NAN_OBS}"
    )
    assert EvalResult(5.0, 0.0, (5.0,), (5,), (False,), ("",)).unstable_note() == ""


@pytest.mark.parametrize("steps, resets, length", [({3}, (), 2), ((), {2}, 0)])
def test_the_control_loop_ends_an_episode_the_simulation_cannot_go_on_from(blowing_up, steps, resets, length):
    blowing_up(at=steps, resets=resets)
    env = make_env(ENV)
    try:
        episode = _control_episode(env, 0, lambda obs: np.zeros(1, np.float32), _TickClock(1e-4), None)
    finally:
        env.close()
    assert (episode.total, episode.length, episode.terminated) == (float(length), length, False)
    assert episode.unstable == f"{ENV}'s {'step' if steps else 'reset'} returned {NAN_OBS}"


def test_flowrl_train_prints_each_cut_episode_as_it_happens_and_flowrl_eval_counts_them(blowing_up, tmp_path):
    from typer.testing import CliRunner

    from flowrl_deploy.cli import app

    blowing_up(at={7})
    out = tmp_path / "run"
    flags = ["--steps", "20", "--start-steps", "20", "--hidden", "8", "--batch-size", "8", "--eval-every", "0",
             "--threads", "1", "--no-progress", "--out", str(out)]  # fmt: skip
    trained = CliRunner().invoke(app, ["train", "--env", ENV, *flags])
    assert trained.exit_code == 0, trained.output
    warned = f"warning: episode 2 cut short after 1 step, at env step 6: {ENV}'s step returned {NAN_OBS}\n"
    assert trained.stderr == warned
    assert trained.stdout.startswith("trained 20 env steps")
    blowing_up(at={3})
    evaluated = CliRunner().invoke(app, ["eval", str(out), "--episodes", "2"])
    assert evaluated.exit_code == 0, evaluated.output
    assert evaluated.stdout.startswith(f"{ENV}: return 3.50 ± 1.50 over 2 episodes")
    assert evaluated.stdout.rstrip().endswith(", 1 of 2 cut short by an unstable simulation")
    assert evaluated.stderr == (
        f"warning: 1 of 2 episodes was cut short by an unstable simulation: {ENV}'s step returned {NAN_OBS}\n"
    )


def test_a_gym_mujoco_task_whose_reset_meets_an_unstable_state_raises_a_simulation_error(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # MuJoCo writes its warnings to MUJOCO_LOG.TXT there
    monkeypatch.setattr(MujocoBall, "blow_up_at", frozenset())
    monkeypatch.setattr(MujocoBall, "settle_through_nan", frozenset({2}))
    env = make_env("FlowRLTestMujocoBall-v0")
    try:
        with pytest.raises(SimulationError) as raised:
            env.reset(0)
        env.reset(1)
        obs, *_ = env.step(np.zeros(1, np.float32))
    finally:
        env.close()
    assert str(raised.value) == (
        "FlowRLTestMujocoBall-v0: the simulation became unstable in its reset (MuJoCo warned mjWARN_BADQVEL and "
        "reset its state)"
    )
    assert np.isfinite(obs).all()
