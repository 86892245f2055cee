"""docs/train.md's details for readers of the paper: the numbers it gives are what the code does."""

import math
import re
from pathlib import Path

import torch

from flowrl_deploy.spec import PolicySpec
from flowrl_deploy.train.actor import FlowActor

DOCS = Path(__file__).parents[2] / "docs" / "train.md"


def section(heading: str) -> str:
    """One ``## heading`` section of docs/train.md, up to the next."""
    return DOCS.read_text(encoding="utf-8").split(f"## {heading}\n")[1].split("\n## ")[0]


def test_the_tanh_mismatch_of_flow_matching_is_listed_with_what_the_actor_executes():
    """Flow matching fits the ODE endpoint to the buffer action, and the actor executes its tanh: the
    doc's pairs (0.9 → 0.716) are the actor's own squash of the fitted endpoint, not numbers typed once."""
    details = section("Paper details and learning results")
    bullet = " ".join(details.split("- **Flow matching through tanh")[1].split("\n- **")[0].split())
    pairs = re.findall(r"(\d\.\d+) → (\d\.\d+)", bullet)
    assert ("0.9", "0.716") in pairs and len(pairs) >= 3
    actor = FlowActor(PolicySpec(obs_dim=1, act_dim=1, action_low=(-1.0,), action_high=(1.0,), hidden=8))
    for fitted, executed in pairs:
        buffer_action = torch.tensor([[float(fitted)]])
        endpoint = actor.to_normalized(buffer_action)  # the flow-matching target: no atanh
        assert torch.equal(endpoint, buffer_action)
        assert round(float(actor.squash(endpoint)), 3) == float(executed)
        assert round(math.tanh(float(fitted)), 3) == float(executed)
