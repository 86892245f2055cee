"""evaluate refuses, in one line, a number of episodes below 1 (it gave 'nan ± nan over 0 episodes'
and numpy's RuntimeWarnings) and an act_fn whose action has another shape than the task's
(dm_control's raw ValueError)."""

import warnings

import numpy as np
import pytest

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.train.evaluate import evaluate


@pytest.mark.parametrize("episodes", [0, -1, 1.5, True])
def test_episodes_below_one_are_refused_before_any_env_is_made(episodes):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(FlowRLError, match=rf"^episodes must be a whole number >= 1, got {episodes}$"):
            evaluate(lambda obs: np.zeros(1, np.float32), "dmc:no-such-task", episodes)


@pytest.mark.parametrize(
    ("action", "shape"),
    [(np.zeros(2, np.float32), r"\[2\]"), (np.zeros((1, 1)), r"\[1, 1\]")],
)
def test_an_action_of_another_shape_than_the_tasks_is_refused_naming_both(action, shape):
    pytest.importorskip("dm_control")
    with pytest.raises(
        FlowRLError, match=rf"^the policy returned an action of shape {shape}, but dmc:cartpole-balance takes \[1\]$"
    ):
        evaluate(lambda obs: action, "dmc:cartpole-balance", 1)


def test_a_scalar_action_of_a_one_action_task_is_taken_as_dm_control_takes_it():
    pytest.importorskip("dm_control")
    result = evaluate(lambda obs: np.float32(0.0), "dmc:cartpole-balance", 1)
    assert result.lengths == (1000,)
