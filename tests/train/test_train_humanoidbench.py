"""HumanoidBench h1-walk-v0: falls are terminations, and a brief run trains and evaluates.

Needs the optional HumanoidBench install (its own venv; see the README); skipped without it.
"""

import numpy as np
import pytest

from flowrl_deploy.train.config import TrainConfig
from flowrl_deploy.train.envs import make_env
from flowrl_deploy.train.evaluate import checkpoint_act_fn, evaluate
from flowrl_deploy.train.loop import train

pytestmark = pytest.mark.humanoidbench
pytest.importorskip("humanoid_bench", reason="HumanoidBench is not installed (optional; CI runs this in its own venv)")


def test_h1_walk_shapes_and_a_fall_is_a_termination():
    env = make_env("h1-walk-v0", seed=0)
    assert (env.info.obs_dim, env.info.act_dim) == (51, 19)
    assert env.info.obs_layout == (("qpos", 26), ("qvel", 25))  # the root's world x, y first
    assert env.info.action_names[:4] == ("left_hip_yaw", "left_hip_roll", "left_hip_pitch", "left_knee")  # H1's motors
    assert len(set(env.info.action_names)) == 19
    obs = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (51,)
    rng = np.random.default_rng(0)
    for _ in range(1000):
        obs, _, terminated, truncated = env.step(rng.uniform(env.info.action_low, env.info.action_high))
        if terminated or truncated:
            break
    assert terminated and not truncated  # random actions make the robot fall long before the time limit


@pytest.mark.slow
def test_h1_walk_trains_and_evaluates_briefly(tmp_path):
    cfg = TrainConfig(env="h1-walk-v0", steps=300, hidden=32, batch_size=32, start_steps=100, eval_every=0,
                      save_every=0, threads=1, out=str(tmp_path))  # fmt: skip
    result = train(cfg, progress=False)
    assert result.counters.env_steps == 300 and result.counters.episodes >= 1
    evaluation = evaluate(checkpoint_act_fn(result.last_checkpoint, device="cpu"), "h1-walk-v0", episodes=1)
    assert np.isfinite(evaluation.mean)
    assert evaluation.terminated == (True,) and evaluation.lengths[0] < 1000  # a policy this young falls
