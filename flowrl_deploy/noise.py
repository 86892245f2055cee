"""Policy noise: one seeded convention for every place a stochastic policy acts, so that a seeded
episode is reproducible and the same wherever it runs.

``session_noise(seed)`` and ``draw_noise``: numpy ``Generator(PCG64(seed)).standard_normal`` in
float32, one [B, act_dim] block per call, in call order. A server session draws its requests'
noise this way, and so do a client's local fallback, ``flowrl eval`` of an ONNX file
(``policy.SeededPolicy``) and of a checkpoint (``train.actor.actor_act_fn``): the same
seed plays the same episodes through each. It lives in the core package, so none of them needs
the server.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.fieldtypes import is_integer, shown
from flowrl_deploy.moved import moved_names

Seed: TypeAlias = "int | np.integer[Any]"
"""A noise seed as the API takes it: a Python or NumPy integer in [0, 2**64)."""


def checked_seed(seed: Seed | None, name: str = "seed") -> Seed | None:
    """A noise seed travels as a uint64: refuse others with a clear error naming ``name`` (the
    argument or the flag), not numpy's or protobuf's ValueError or TypeError."""
    if seed is None:
        return None
    if not is_integer(seed):
        got = repr(float(seed)) if isinstance(seed, (float, np.floating)) else shown(seed)  # 1.0, not '1'
        raise FlowRLError(f"{name} must be an integer in [0, 2**64), got {got}")
    if not 0 <= seed < 2**64:
        raise FlowRLError(f"{name} must lie in [0, 2**64), got {seed}")
    return seed


def run_seed_problem(flag: str, seed: int) -> str | None:
    """Why ``seed`` cannot seed a run (env resets, dm_control's and numpy's legacy generators take
    [0, 2**32)), naming ``flag``; None when it can."""
    return None if 0 <= seed < 2**32 else f"{flag} must lie in [0, 2**32), got {seed}"


def session_noise(seed: Seed | None) -> np.random.Generator:
    """The generator a session seeded with ``seed`` draws from (``None``: OS entropy); a seed that is
    no uint64 raises :class:`FlowRLError` (see :func:`checked_seed`)."""
    return np.random.Generator(np.random.PCG64(checked_seed(seed)))


def draw_noise(generator: np.random.Generator, batch: int, act_dim: int) -> npt.NDArray[np.float32]:
    """The next noise block ~ N(0, I), shape [batch, act_dim], float32: the policy's noise input,
    which the sampler clamps into a0."""
    return generator.standard_normal((batch, act_dim), dtype=np.float32)


MOVED = {"Session": "flowrl_deploy.serve.sessions"}
"""v0.1.0's server session (8bfbbce moved it to the server): given only through ``__getattr__``, which
imports the server's module when it is asked for, never when this core module is imported."""

__getattr__ = moved_names(__name__, MOVED)
