"""train(), evaluate() and checkpoint_act_fn called from a researcher's own Python process leave its
process-wide state as they found it: torch's thread count, torch's global RNG, the root logger."""

import pytest
import torch
from tiny_training import TINY  # threads=1: the caller's 2 must come back

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.train.config import TrainConfig
from flowrl_deploy.train.loop import train


@pytest.fixture
def two_torch_threads():
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(1)


def test_train_gives_the_callers_torch_thread_count_back(tmp_path, two_torch_threads):
    train(TrainConfig(steps=200, out=str(tmp_path / "run"), **TINY), progress=False)
    assert torch.get_num_threads() == 2


def test_a_train_that_raises_gives_the_callers_torch_thread_count_back(tmp_path, two_torch_threads):
    with pytest.raises(FlowRLError):  # refused after --threads took effect: the task is unknown
        train(TrainConfig(steps=200, out=str(tmp_path / "run"), **{**TINY, "env": "dmc:nope-nope"}))
    assert torch.get_num_threads() == 2


def test_loading_a_checkpoint_leaves_torchs_global_rng_alone(tmp_path):
    """The actor's random initialisation, overwritten by the checkpoint's weights, drew from torch's
    global RNG: a caller's seeded torch draws after checkpoint_act_fn came out otherwise."""
    from flowrl_deploy.train.actor import load_actor
    from flowrl_deploy.train.evaluate import checkpoint_act_fn

    checkpoint = train(TrainConfig(steps=200, out=str(tmp_path / "run"), **TINY), progress=False)
    torch.manual_seed(5)
    expected = torch.rand(4)
    for load in (checkpoint_act_fn, load_actor):
        torch.manual_seed(5)
        load(checkpoint.last_checkpoint)
        assert torch.equal(torch.rand(4), expected), load.__name__
