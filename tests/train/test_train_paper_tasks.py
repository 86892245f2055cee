"""Every task of the paper's evaluation can be made, and a flow policy of its shape acts in it."""

import numpy as np
import pytest
import torch

from flowrl_deploy.train.actor import FlowActor
from flowrl_deploy.train.config import TrainConfig
from flowrl_deploy.train.envs import make_env
from flowrl_deploy.train.loop import policy_spec

DMC_TASKS = [
    "dmc:walker-run",
    "dmc:walker-stand",
    "dmc:quadruped-walk",
    "dmc:humanoid-run",
    "dmc:humanoid-walk",
    "dmc:dog-run",
    "dmc:dog-trot",
    "dmc:dog-stand",
    "dmc:dog-walk",
]
# (obs, act) from HumanoidBench at commit 791405f (../shared/third_party/README.md).
HUMANOIDBENCH_TASKS = {
    "h1-balance_hard-v0": (77, 19),
    "h1-balance_simple-v0": (64, 19),
    "h1-crawl-v0": (51, 19),
    "h1-maze-v0": (51, 19),
    "h1-reach-v0": (57, 19),
    "h1-sit_hard-v0": (64, 19),
    "h1-walk-v0": (51, 19),
}


def act_and_step(env_id: str) -> tuple[int, int]:
    env = make_env(env_id, seed=0)
    try:
        spec = policy_spec(env.info, TrainConfig(env=env_id, hidden=8))
        actor = FlowActor(spec)
        obs = env.reset(seed=0)
        assert obs.shape == (spec.obs_dim,) and obs.dtype == np.float32
        with torch.no_grad():
            action = actor(torch.as_tensor(obs)[None], num_steps=2)[0].numpy()
        assert np.all(action >= env.info.action_low) and np.all(action <= env.info.action_high)
        next_obs, reward, terminated, _ = env.step(action)
        assert next_obs.shape == obs.shape and np.isfinite(reward) and not terminated  # no fall in one step
        return spec.obs_dim, spec.act_dim
    finally:
        env.close()


@pytest.mark.parametrize("env_id", DMC_TASKS)
def test_dm_control_paper_task_runs(env_id):
    obs_dim, act_dim = act_and_step(env_id)
    if env_id.startswith("dmc:dog"):
        assert (obs_dim, act_dim) == (223, 38)


@pytest.mark.humanoidbench
@pytest.mark.parametrize(("env_id", "shape"), HUMANOIDBENCH_TASKS.items())
def test_humanoidbench_paper_task_runs(env_id, shape):
    pytest.importorskip(
        "humanoid_bench", reason="HumanoidBench is not installed (optional; CI runs it in a venv of its own)"
    )
    assert act_and_step(env_id) == shape
