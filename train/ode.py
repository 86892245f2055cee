"""The fixed-step ODE solver that turns noise into an action; one code path for training
(N = 1), evaluation, and the torch reference that the ONNX export is verified against.

Time runs forward: t = 0 is the noise a0 (``FlowActor.initial_state``: N(0, I) clamped to
±noise_clip), t = 1 the pre-tanh action. With N steps, dt = 1/N and t_k = k·dt.

- Euler:    a_{k+1} = a_k + dt · v(s, a_k, t_k)
- Midpoint: a_{k+1} = a_k + dt · v(s, a_k + dt/2 · v(s, a_k, t_k), t_k + dt/2)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from flowrl_deploy.spec import SOLVERS

VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def integrate(
    velocity_fn: VelocityFn,
    obs: torch.Tensor,
    a0: torch.Tensor,
    num_steps: int,
    solver: str = "midpoint",
) -> torch.Tensor:
    """Integrate da/dt = v(obs, a, t) from a0 at t = 0 to t = 1 in ``num_steps`` fixed steps."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose {' or '.join(map(repr, SOLVERS))}")
    dt = 1.0 / num_steps
    a_t = a0
    for k in range(num_steps):
        t = torch.full((a0.shape[0], 1), k * dt, dtype=a0.dtype, device=a0.device)
        v_t = velocity_fn(obs, a_t, t)
        if solver == "midpoint":
            v_t = velocity_fn(obs, a_t + 0.5 * dt * v_t, t + 0.5 * dt)
        a_t = a_t + dt * v_t
    return a_t
