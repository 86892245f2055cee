"""A small randomly initialised FlowRL policy: export needs weights, not training."""

from __future__ import annotations

import numpy as np
import torch

from flowrl_deploy.spec import PolicySpec
from flowrl_deploy.train.actor import FlowActor

SPEC = PolicySpec(
    obs_dim=5,
    act_dim=3,
    action_low=(-1.0, 0.0, -2.0),
    action_high=(1.0, 4.0, -1.5),
    hidden=32,
    solver="midpoint",
    flow_steps=1,
    env_id="dmc:test-task",
    obs_layout=(("position", 3), ("velocity", 2)),
    action_names=("hip", "knee", "ankle"),
    control_period_s=0.02,
)


def actor_tensors(spec: PolicySpec = SPEC, seed: int = 0) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    return {k: v.numpy() for k, v in FlowActor(spec).state_dict().items()}
