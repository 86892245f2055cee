"""TrainConfig's ranges not covered elsewhere: counts that may be 0 but not negative, rates that
must be positive, and the device; each refusal names the `flowrl train` flag."""

import re

import pytest

from flowrl_deploy.train.config import ConfigError, TrainConfig


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"start_steps": -1}, "--start-steps must be >= 0, got -1"),
        ({"eval_every": -1}, "--eval-every must be >= 0, got -1"),
        ({"save_every": -1}, "--save-every must be >= 0, got -1"),
        ({"lr": 0.0}, "--lr must be > 0, got 0.0"),
        ({"lam": -1.0}, "--lam must be > 0, got -1.0"),
        ({"device": "tpu"}, "--device must be one of auto, cpu, cuda, got 'tpu'"),
    ],
)
def test_a_setting_out_of_range_names_its_flag(changes, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        TrainConfig(**changes)


@pytest.mark.parametrize("changes", [{"start_steps": 0, "eval_every": 0, "save_every": 0}, {"device": "cpu"}])
def test_the_edge_of_each_range_is_taken(changes):
    assert TrainConfig(**changes).to_dict().items() >= changes.items()
