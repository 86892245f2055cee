"""`flowrl train` on a task FlowRL cannot drive (discrete actions, observations that are not a flat
vector) is one line naming the space, and leaves no run directory behind."""

import gymnasium as gym
import numpy as np
import pytest
from typer.testing import CliRunner

from flowrl_deploy.cli import app


class SquareObservationEnv(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (4, 4), np.float32)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode


gym.register("FlowRLTestSquareObs-v0", entry_point=SquareObservationEnv, max_episode_steps=5)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ("CartPole-v1", "CartPole-v1 has action space Discrete(2); FlowRL needs a 1-D continuous Box"),
        (
            "FlowRLTestSquareObs-v0",
            "FlowRLTestSquareObs-v0 has observations of shape (4, 4); FlowRL needs a flat vector",
        ),
    ],
)
def test_a_task_of_other_spaces_is_one_line_and_makes_no_run_directory(tmp_path, env, message):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--env", env, "--steps", "10", "--no-progress", "--out", str(out)])
    assert result.exit_code == 1
    assert result.output == f"error: {message}\n"
    assert not out.exists()
