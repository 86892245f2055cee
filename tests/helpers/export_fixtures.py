"""A small randomly initialised FlowRL policy: export needs weights, not training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flowrl_deploy.checkpoint import save_checkpoint
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
WIDE = PolicySpec(
    obs_dim=40,
    act_dim=12,
    action_low=(-1.0,) * 12,
    action_high=(2.0,) * 12,
    hidden=256,
    solver="midpoint",
    flow_steps=1,
    env_id="dmc:test-task",
    obs_layout=(("position", 40),),
    action_names=tuple(f"joint_{i}" for i in range(12)),
    control_period_s=0.02,
)
"""Wide enough that TF32 matmuls (10-bit mantissas) would move the actions far past 1e-5: the GPU tests' policy."""
PERTURBATION = 0.2
"""Standard deviation of the noise added to every tensor: torch's initialisation has zero biases,
LayerNorm gains of 1 and shifts of 0, so a graph that dropped or swapped one of them would still match."""


def actor_tensors(spec: PolicySpec = SPEC, seed: int = 0, *, perturbed: bool = True) -> dict[str, np.ndarray]:
    """A FlowActor's state_dict, each tensor (biases and LayerNorm weights included) moved by
    PERTURBATION × N(0, 1) unless ``perturbed`` is False (then torch's initialisation as is)."""
    torch.manual_seed(seed)
    tensors = {k: v.numpy() for k, v in FlowActor(spec).state_dict().items()}
    if not perturbed:
        return tensors
    rng = np.random.default_rng(seed)
    return {k: (v + PERTURBATION * rng.standard_normal(v.shape)).astype(np.float32) for k, v in sorted(tensors.items())}


def saved_checkpoint(folder: Path) -> Path:
    """A checkpoint of :data:`SPEC` with :func:`actor_tensors`, as ``folder/step_1``: what a CLI test
    exports, evaluates or inspects."""
    return save_checkpoint(folder / "step_1", spec=SPEC, actor=actor_tensors())
