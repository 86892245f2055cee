"""Environment adapters: shapes, dtypes, seeding, and truncation versus termination."""

from pathlib import Path
from types import SimpleNamespace

import dm_env
import gymnasium as gym
import numpy as np
import pytest

from flowrl_deploy.errors import EnvIdError
from flowrl_deploy.train.envs import DMCEnv, _qpos_qvel_layout, episode_seed, make_env


@pytest.fixture(scope="module")
def cartpole():
    return make_env("dmc:cartpole-swingup", seed=0)


def test_dmc_observations_are_flat_float32_in_the_spec_order(cartpole):
    info = cartpole.info
    assert info.obs_layout == (("position", 3), ("velocity", 2))
    assert (info.obs_dim, info.act_dim) == (5, 1)
    obs = cartpole.reset(seed=1)
    assert obs.shape == (5,) and obs.dtype == np.float32
    np.testing.assert_array_equal(info.action_low, [-1.0])
    np.testing.assert_array_equal(info.action_high, [1.0])
    assert info.control_period_s == pytest.approx(0.01)  # physics dt × substeps
    assert info.action_names == ("slide",)


@pytest.fixture(scope="module")
def walker():
    return make_env("dmc:walker-walk", seed=3)


def test_dmc_control_period_is_the_agent_step_not_the_physics_step(walker):
    """Walker steps its physics 10 times per action (0.0025 s each): a contract runs it at 40 Hz."""
    assert walker.info.control_period_s == pytest.approx(0.025)


def test_dmc_observations_follow_the_advertised_layout_not_sorted_keys(walker):
    """Walker's spec order (orientations, height, velocity) is not alphabetical: a client that
    assembles observations by the contract's obs_layout must get what training saw."""
    from dm_control import suite

    assert walker.info.obs_layout == (("orientations", 14), ("height", 1), ("velocity", 9))
    observation = suite.load("walker", "walk", task_kwargs={"random": 3}).reset().observation
    obs = walker.reset(seed=3)  # the same initial state as the bare suite's
    np.testing.assert_array_equal(obs[:14], observation["orientations"].astype(np.float32))
    np.testing.assert_array_equal(obs, np.concatenate([np.ravel(v) for v in observation.values()]).astype(np.float32))


def test_dmc_reset_seed_fixes_the_initial_state(cartpole):
    first = cartpole.reset(seed=7)
    cartpole.reset(seed=8)
    np.testing.assert_array_equal(cartpole.reset(seed=7), first)
    assert not np.array_equal(make_env("dmc:cartpole-swingup", seed=0).reset(seed=8), first)


def test_dmc_reset_seed_zero_is_a_seed_like_any_other():
    """reset(seed=0) fixes the initial state too, whatever seed the env was made with."""
    np.testing.assert_array_equal(
        make_env("dmc:cartpole-swingup", seed=1).reset(seed=0), make_env("dmc:cartpole-swingup", seed=2).reset(seed=0)
    )


def test_dmc_time_limit_is_a_truncation_not_a_termination(cartpole):
    cartpole.reset(seed=0)
    steps, truncated = 0, False
    while not truncated and steps < 2000:
        obs, reward, terminated, truncated = cartpole.step(np.zeros(1, np.float32))
        assert obs.dtype == np.float32 and isinstance(reward, float)
        assert not terminated
        steps += 1
    assert steps == 1000 and truncated


def test_dmc_discount_zero_is_a_termination(cartpole, monkeypatch):
    obs = {"position": np.zeros(3), "velocity": np.zeros(2)}
    monkeypatch.setattr(cartpole._env, "step", lambda action: dm_env.termination(reward=1.0, observation=obs))
    assert cartpole.step(np.zeros(1))[2:] == (True, False)


class FallingEnv(gym.Env):
    """Terminates (falls) at step 3, else truncates at 5 by its TimeLimit."""

    observation_space = gym.spaces.Box(-1, 1, (2,), np.float64)
    action_space = gym.spaces.Box(-0.5, 0.5, (1,), np.float32)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2), {}

    def step(self, action):
        self.t += 1
        fall = float(action[0]) > 0.25 and self.t == 3
        return np.ones(2), 1.0, fall, False, {}


gym.register("FlowRLTestFalling-v0", entry_point=FallingEnv, max_episode_steps=5)


def test_training_masks_the_bootstrap_after_a_fall_but_not_after_a_time_limit(tmp_path):
    from flowrl_deploy.checkpoint import load_checkpoint
    from flowrl_deploy.train.config import TrainConfig
    from flowrl_deploy.train.loop import train

    cfg = TrainConfig(env="FlowRLTestFalling-v0", steps=80, start_steps=80, hidden=8, batch_size=8, eval_every=0,
                      save_replay=True, out=str(tmp_path / "run"), threads=1)  # fmt: skip
    replay = load_checkpoint(train(cfg, progress=False).last_checkpoint, training_state=True).replay
    t, ends = 0, {"fall": 0, "time limit": 0}
    for action, mask in zip(replay["action"][:, 0], replay["mask"], strict=True):
        t += 1
        fell = t == 3 and action > 0.25
        assert mask == (0.0 if fell else 1.0), (t, action)
        if fell or t == 5:
            ends["fall" if fell else "time limit"] += 1
            t = 0
    assert ends["fall"] > 0 and ends["time limit"] > 0


def test_training_logs_each_episodes_length_and_whether_it_terminated(tmp_path):
    """A fall's rate is HumanoidBench's key diagnostic: every episode row says how long it ran and
    whether the task ended it (a fall, at step 3 here) or the time limit did (step 5)."""
    import json

    from flowrl_deploy.train.config import TrainConfig
    from flowrl_deploy.train.loop import train

    cfg = TrainConfig(env="FlowRLTestFalling-v0", steps=80, start_steps=80, hidden=8, batch_size=8, eval_every=0,
                      out=str(tmp_path / "run"), threads=1)  # fmt: skip
    rows = (train(cfg, progress=False).run_dir / "metrics.jsonl").read_text().splitlines()
    episodes = [row for row in map(json.loads, rows) if "charts/episode_return" in row]
    ends = {(row["charts/episode_length"], row["charts/episode_terminated"]) for row in episodes}
    assert ends == {(3, 1.0), (5, 0.0)}
    steps = np.cumsum([row["charts/episode_length"] for row in episodes])
    assert [row["step"] for row in episodes] == steps.tolist()


def test_evaluation_reports_each_episodes_length_and_termination():
    from flowrl_deploy.train.evaluate import evaluate

    result = evaluate(lambda obs: np.array([0.4], np.float32), "FlowRLTestFalling-v0", episodes=2)
    assert (result.lengths, result.terminated) == ((3, 3), (True, True))
    assert result.lengths_summary() == "length 3 ± 0 steps, 2 of 2 ended by termination"
    result = evaluate(lambda obs: np.array([0.0], np.float32), "FlowRLTestFalling-v0", episodes=1)
    assert (result.lengths, result.terminated) == ((5,), (False,))


class MuJoCoArmEnv(gym.Env):
    """A gymnasium env on a MuJoCo ``model``, as HumanoidBench's are: two motors named ``names`` (None: unnamed)."""

    action_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float64)

    def __init__(self, names, render_mode=None):
        import mujoco

        motors = "".join(
            f'<motor {f"name={name!r} " if name else ""}joint="{joint}"/>'
            for name, joint in zip(names, ("shoulder", "elbow"), strict=True)
        )
        self.model = mujoco.MjModel.from_xml_string(
            '<mujoco><worldbody><body><joint name="shoulder"/><geom size="0.1"/><body pos="0 0 0.3">'
            f'<joint name="elbow"/><geom size="0.1"/></body></body></worldbody><actuator>{motors}</actuator></mujoco>'
        )

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(4), {}

    def step(self, action):
        return np.zeros(4), 0.0, False, False, {}


ARMS = {
    "FlowRLTestArm-v0": (("shoulder_motor", "elbow_motor"), ("shoulder_motor", "elbow_motor")),
    "FlowRLTestUnnamedArm-v0": (("shoulder_motor", None), ()),  # an unnamed actuator: no names, not made-up ones
}
for arm_id, (motor_names, _) in ARMS.items():
    gym.register(arm_id, entry_point=MuJoCoArmEnv, kwargs={"names": motor_names}, max_episode_steps=10)


@pytest.mark.parametrize("env_id", ARMS)
def test_a_gym_env_on_mujoco_records_its_actuator_names_as_action_names(env_id):
    """HumanoidBench's h1-* envs recorded no action names: a controller could not tell which action drives
    which motor."""
    pytest.importorskip("mujoco")
    assert make_env(env_id).info.action_names == ARMS[env_id][1]


class BothMotorsAsOne(gym.ActionWrapper):
    """One action driving both motors of the arm: the action space is no longer one action per actuator."""

    def __init__(self, env):
        super().__init__(env)
        self.action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def action(self, action):
        return np.repeat(action, 2)


gym.register(
    "FlowRLTestOneActionArm-v0",
    entry_point=lambda **kwargs: BothMotorsAsOne(MuJoCoArmEnv(**kwargs)),
    kwargs={"names": ("shoulder_motor", "elbow_motor")},
    max_episode_steps=10,
)


def test_an_env_whose_actions_are_not_its_actuators_records_no_action_names():
    """The first actuator's name must not be given to an action that drives both."""
    pytest.importorskip("mujoco")
    info = make_env("FlowRLTestOneActionArm-v0").info
    assert (info.act_dim, info.action_names) == (1, ())


def test_flowrl_inspect_lists_the_actuator_names_of_a_gym_mujoco_policy(tmp_path):
    pytest.importorskip("mujoco")
    pytest.importorskip("onnx")
    from typer.testing import CliRunner

    from flowrl_deploy.cli import app
    from flowrl_deploy.train.config import TrainConfig
    from flowrl_deploy.train.loop import train

    cfg = TrainConfig(env="FlowRLTestArm-v0", steps=20, start_steps=20, hidden=8, batch_size=8, eval_every=0,
                      out=str(tmp_path / "run"), threads=1)  # fmt: skip
    checkpoint = train(cfg, progress=False).last_checkpoint
    runner = CliRunner()
    exported = runner.invoke(app, ["export", str(checkpoint), "--out", str(tmp_path / "arm.onnx")])
    assert exported.exit_code == 0, exported.output
    inspected = runner.invoke(app, ["inspect", str(tmp_path / "arm.onnx")])
    assert "action       2 values: shoulder_motor, elbow_motor" in inspected.output, inspected.output


def test_a_resumed_run_keeps_the_names_its_checkpoints_record(tmp_path, monkeypatch):
    """A run saved before flowrl named HumanoidBench's actuators, resumed after: its later checkpoints must keep
    the old (empty) action names, or their exports change contract hash partway through the run and a server
    refuses to hot-swap them (action_names [] != [...])."""
    pytest.importorskip("mujoco")
    from dataclasses import replace

    from flowrl_deploy.checkpoint import read_spec
    from flowrl_deploy.train import loop
    from flowrl_deploy.train.config import TrainConfig
    from flowrl_deploy.train.resume import resume_config

    out, current = tmp_path / "run", loop.policy_spec
    cfg = TrainConfig(env="FlowRLTestArm-v0", steps=20, start_steps=20, hidden=8, batch_size=8, eval_every=0,
                      save_every=20, out=str(out), threads=1)  # fmt: skip
    with monkeypatch.context() as older:  # an older flowrl: no action names, another name for the observation
        older.setattr(loop, "policy_spec", lambda *a: replace(current(*a), action_names=(), obs_layout=(("obs", 4),)))
        first = read_spec(loop.train(cfg, progress=False).last_checkpoint)
    later = read_spec(loop.train(resume_config(out, steps=40), resume=out, progress=False).last_checkpoint)
    assert (first.action_names, first.obs_layout) == ((), (("obs", 4),))
    assert (later.action_names, later.obs_layout) == ((), (("obs", 4),))
    assert make_env("FlowRLTestArm-v0").info.action_names  # the env itself does name them now


def run(env, action):
    env.reset(seed=0)
    for _ in range(10):
        result = env.step(np.array([action], np.float32))
        if result[2] or result[3]:
            return result


def test_gym_adapter_separates_falls_from_time_limits():
    env = make_env("FlowRLTestFalling-v0", seed=0)
    assert (env.info.obs_dim, env.info.act_dim) == (2, 1)
    np.testing.assert_array_equal(env.info.action_high, [0.5])
    obs, _, terminated, truncated = run(env, 0.4)
    assert obs.dtype == np.float32 and (terminated, truncated) == (True, False)
    assert run(env, 0.0)[2:] == (False, True)


def test_gym_control_period_is_the_env_dt():
    """Pendulum-v1 steps at 20 Hz: its contract must carry that rate (0.0 would mean "unknown")."""
    assert make_env("Pendulum-v1").info.control_period_s == pytest.approx(0.05)


@pytest.mark.parametrize("env_id", ["dmc:cartpole-nope", "dmc:nodomain-run", "NoSuchEnv-v3", "dmc:", "walker"])
def test_unknown_ids_fail_at_once_saying_how_to_name_tasks(env_id):
    with pytest.raises(EnvIdError, match="dmc:<domain>-<task>"):
        make_env(env_id)


def test_missing_humanoidbench_says_how_to_install_it():
    pytest.importorskip("gymnasium")
    try:
        import humanoid_bench  # noqa: F401
    except ImportError:
        with pytest.raises(EnvIdError, match="HumanoidBench is optional"):
            make_env("h1-walk-v0")
    else:
        pytest.skip("humanoid_bench is installed here, so h1-walk-v0 exists")


def test_humanoidbench_hint_gives_commands_that_work_without_pypi():
    """flowrl-deploy is not on PyPI: `pip install 'flowrl-deploy[...]'` in a new venv looks the name up on the
    index (and would install whoever registered it). The hint names the README's commands, run from a clone."""
    import re

    from flowrl_deploy.train.envs import HUMANOIDBENCH_INSTALL

    assert not re.search(r"install\s+'?\"?flowrl-deploy\[", HUMANOIDBENCH_INSTALL), HUMANOIDBENCH_INSTALL
    assert "scripts/setup_humanoidbench.sh" in HUMANOIDBENCH_INSTALL
    assert "pip install -e '.[train,export,humanoidbench]'" in HUMANOIDBENCH_INSTALL
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert "scripts/setup_humanoidbench.sh" in readme and '-e ".[train,export,humanoidbench]"' in readme


def test_episode_seeds_are_stable_and_distinct():
    # pinned: a change to the derivation changes every seeded episode (`flowrl eval --seed`, resumed runs)
    assert (episode_seed(0, 5), episode_seed(3, 0, stream=2)) == (1387925762, 960329833)
    assert len({episode_seed(0, i) for i in range(100)} | {episode_seed(0, i, stream=1) for i in range(100)}) == 200
    assert isinstance(make_env("dmc:cartpole-swingup"), DMCEnv)


def test_envs_evaluate_and_config_import_without_torch():
    """`flowrl control` (serve side) and the ONNX evaluation use these modules on machines without torch."""
    import subprocess
    import sys

    code = (
        "import sys; import flowrl_deploy.train.envs, flowrl_deploy.train.evaluate, flowrl_deploy.train.config; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


@pytest.mark.parametrize(
    ("env_id", "hint"),
    [
        ("nosuchmodule:Pendulum-v1", "Install 'nosuchmodule' or put its folder on PYTHONPATH"),
        ("hb:h1-walk-v0", "HumanoidBench ids take no prefix: 'h1-walk-v0'"),
    ],
)
def test_a_module_prefix_that_cannot_be_imported_is_a_wrong_id_not_a_traceback(env_id, hint):
    """gymnasium's `module:id` form imports the module first: `--env hb:h1-walk-v0` ended `flowrl train`
    and `flowrl eval` with gymnasium's ModuleNotFoundError traceback (HumanoidBench review F1)."""
    module = env_id.partition(":")[0]
    with pytest.raises(EnvIdError, match=rf"names the module '{module}'.*no module named '{module}'") as refused:
        make_env(env_id)
    assert hint in str(refused.value) and "How to name tasks" in str(refused.value)


def test_an_import_failing_inside_a_module_prefix_keeps_its_own_error(tmp_path, monkeypatch):
    """`--env mymod:MyEnv-v0` whose module imports a name that is not there was told "there is no module
    named 'mymod.sim'. Install 'mymod' …", hiding the real error (diff review 3)."""
    package = tmp_path / "brokenpkg"
    package.mkdir()
    (package / "__init__.py").write_text("from brokenpkg.sim import MyEnv\n")
    (package / "sim.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match="cannot import name 'MyEnv'"):
        make_env("brokenpkg:MyEnv-v0")


def test_a_mujoco_observation_of_joint_positions_then_velocities_is_laid_out_so():
    """HumanoidBench's h1-walk observes qpos[26] then qvel[25], whose first two are the root's world x
    and y; its contract said only `observation[51]` (HumanoidBench review F4)."""
    data = SimpleNamespace(qpos=np.array([0.5, -1.0, 0.9]), qvel=np.array([0.1, 0.0]))
    env = SimpleNamespace(data=data)
    assert _qpos_qvel_layout(np.array([0.5, -1.0, 0.9, 0.1, 0.0]), env) == (("qpos", 3), ("qvel", 2))
    assert _qpos_qvel_layout(np.array([-1.0, 0.9, 0.1, 0.0]), env) is None  # x left out (gymnasium's Hopper)
    assert _qpos_qvel_layout(np.array([0.5, -1.0, 0.9, 0.1, 0.2]), env) is None  # something else
    assert _qpos_qvel_layout(np.zeros(3), SimpleNamespace()) is None  # no MuJoCo data
    assert make_env("gym:Pendulum-v1").info.obs_layout == (("observation", 3),)


class _FailingFirstReset(gym.Env):
    """A task whose first reset fails (a simulator that cannot load its assets)."""

    closed = 0
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        raise RuntimeError("assets missing")

    def close(self):
        type(self).closed += 1


def test_an_env_whose_first_reset_fails_is_closed():
    """GymEnv resets a task once as it makes it (to read its observation's layout): a failure there left
    the task open (late diff review F6)."""
    gym.register(id="FlowRLFailingReset-v0", entry_point=_FailingFirstReset)
    with pytest.raises(RuntimeError, match="assets missing"):
        make_env("gym:FlowRLFailingReset-v0")
    assert _FailingFirstReset.closed == 1
