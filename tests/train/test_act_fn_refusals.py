"""checkpoint_act_fn refuses what SeededPolicy (an ONNX export) refuses, in one line, when it is
called (flow_steps, seed) or at the act (an observation's shape and values), not with torch's or
numpy's raw errors, and never samples at another N than the one asked for."""

import numpy as np
import pytest
from tiny_policy import OBS_DIM, write_policy
from tiny_training import TINY

from flowrl_deploy.codec import TensorError
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.policy import SeededPolicy
from flowrl_deploy.train.config import TrainConfig
from flowrl_deploy.train.evaluate import checkpoint_act_fn
from flowrl_deploy.train.loop import train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return train(TrainConfig(steps=200, out=str(out), **TINY), progress=False).last_checkpoint


@pytest.mark.parametrize(
    ("flow_steps", "message"),
    [
        (0, r"^flow_steps must lie in \[1, 1000\], got 0$"),
        (-1, r"^flow_steps must lie in \[1, 1000\], got -1$"),
        (2000, r"^flow_steps must lie in \[1, 1000\], got 2000$"),
        (2.5, r"^flow_steps must be a whole number, got 2.5$"),
        (True, r"^flow_steps must be a whole number, got True$"),
    ],
)
def test_a_flow_steps_outside_1_to_1000_is_refused_at_the_call(checkpoint, flow_steps, message):
    with pytest.raises(FlowRLError, match=message):
        checkpoint_act_fn(checkpoint, flow_steps=flow_steps)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, "7"])
def test_a_seed_that_is_no_uint64_is_refused_at_the_call_as_seeded_policy_refuses_it(checkpoint, tmp_path, seed):
    with pytest.raises(FlowRLError, match=r"^seed must (be an integer in|lie in) \[0, 2\*\*64\), got "):
        checkpoint_act_fn(checkpoint, seed=seed)
    with pytest.raises(FlowRLError, match=r"^seed must (be an integer in|lie in) \[0, 2\*\*64\), got "):
        SeededPolicy(write_policy(tmp_path / "p.onnx"), seed=seed, providers=["CPUExecutionProvider"])


def test_a_large_flow_steps_within_the_limit_still_acts(checkpoint):
    assert checkpoint_act_fn(checkpoint, flow_steps=1000)(np.zeros(3, np.float32)).shape == (1,)


@pytest.mark.parametrize(
    ("obs", "message"),
    [
        (lambda d: np.zeros(d + 1, np.float32), r"^obs: shape \[{wider}\] is not \[{d}\], one observation$"),
        (lambda d: np.zeros((2, d), np.float32), r"^obs: shape \[2, {d}\] is not \[{d}\], one observation$"),
        (lambda d: np.r_[np.nan, np.zeros(d - 1)], r"^obs: holds NaN, infinite or beyond-float32 values$"),
        (lambda d: np.array(["a"] * d), r"^obs: dtype <U1 is not accepted \(text\)"),
    ],
)
def test_a_bad_observation_is_the_tensor_error_an_onnx_policy_gives(checkpoint, tmp_path, obs, message):
    """Pendulum's observations are [3]; the tiny ONNX policy's [OBS_DIM]."""
    with pytest.raises(TensorError, match=message.format(d=3, wider=4)):
        checkpoint_act_fn(checkpoint)(obs(3))
    policy = SeededPolicy(write_policy(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    with pytest.raises(TensorError, match=message.format(d=OBS_DIM, wider=OBS_DIM + 1)):
        policy(obs(OBS_DIM))
