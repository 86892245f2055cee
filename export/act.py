"""An exported policy as an ``act_fn(obs) -> action`` with seeded noise, for evaluation in the simulator."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from flowrl_deploy.runtime import OnnxPolicy


def onnx_act_fn(
    model: str | os.PathLike[str] | OnnxPolicy, seed: int = 0, deterministic: bool = False
) -> Callable[[np.ndarray], np.ndarray]:
    """Actions from the ONNX graph for one observation; noise ~ N(0, I) from a generator seeded ``seed``,
    or a0 = 0 when ``deterministic`` (a graph exported with ``--deterministic`` takes no noise at all)."""
    policy = model if isinstance(model, OnnxPolicy) else OnnxPolicy(model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    act_dim = policy.contract.act_dim

    def act(obs: np.ndarray) -> np.ndarray:
        if not policy.takes_noise:
            noise = None
        elif deterministic:
            noise = np.zeros((1, act_dim), dtype=np.float32)
        else:
            noise = rng.standard_normal((1, act_dim), dtype=np.float32)
        return policy.act(np.asarray(obs, dtype=np.float32)[None], noise)[0]

    return act
