"""The loss terms of FlowRL, one pure function each, on tensors (no networks held here).

Shapes: B is the batch; twin critics give [2, B]; ``mask`` is 0 where the transition ended in a
true termination and 1 otherwise (time-limit truncations keep their bootstrap).

Flow-matching space: the ODE runs from the noise a0 (t = 0) to its endpoint a1 (t = 1), and the
policy acts with tanh(a1) rescaled to the action bounds. The flow-matching target is the buffer
action mapped to [-1, 1] (``FlowActor.to_normalized``) *without* atanh: random warm-up actions and
saturated policy actions sit on ±1, where atanh is infinite. The reference code also leaves out
atanh but regresses on the raw env action; the two targets agree when the action bounds are ±1 (as
on DMControl), and for other bounds only the mapped action is in the ODE's space. The term is a
regulariser toward the good actions of the buffer, not an exact likelihood, so this mismatch through
tanh is kept, although it pulls toward actions shrunk toward 0: a buffer action 0.9 fitted exactly
is executed as tanh(0.9) ≈ 0.716 (docs/train.md, "Paper details"; its effect on returns is not
measured).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

WEIGHT_MIN, WEIGHT_MAX = 1e-3, 1.0  # the reference code's clamp of the flow-matching weight


def td_target(reward: torch.Tensor, mask: torch.Tensor, next_value: torch.Tensor, gamma: float) -> torch.Tensor:
    """y = r + γ · mask · next_value."""
    return reward + gamma * mask * next_value


def _twin_mse(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Σ over the twin heads of the mean squared error to one shared target."""
    return ((q - target.unsqueeze(0)) ** 2).mean(dim=1).sum()


def critic_td_loss(
    q: torch.Tensor, reward: torch.Tensor, mask: torch.Tensor, next_min_q_target: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Q^π: both heads toward r + γ·mask·min Q̄^π(s', a'), a' ~ π(s') (no entropy term)."""
    return _twin_mse(q, td_target(reward, mask, next_min_q_target, gamma).detach())


def buffer_q_loss(
    q: torch.Tensor, reward: torch.Tensor, mask: torch.Tensor, next_v: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Q^β (behavior-optimal critic): both heads toward r + γ·mask·V(s')."""
    return _twin_mse(q, td_target(reward, mask, next_v, gamma).detach())


def expectile_value_loss(v: torch.Tensor, min_q_target: torch.Tensor, expectile: float) -> torch.Tensor:
    """Expectile regression of V(s) toward min Q̄^β(s, a) at buffer actions:
    mean |τ − 1(u < 0)| · u², with u = Q − V."""
    u = min_q_target.detach() - v
    weight = torch.where(u > 0, expectile, 1.0 - expectile)
    return (weight * u**2).mean()


def flow_weights(q_beta: torch.Tensor, q_pi: torch.Tensor, lam: float) -> torch.Tensor:
    """Per-sample weight of the flow-matching term, from the advantage A = Q^β(s, a) − Q^π(s, π(s)):
    clamp(λ · exp(A⁺ − mean(A⁺)), 1e-3, 1), A⁺ = max(A, 0). A constant: no gradient flows through it."""
    positive = F.relu(q_beta - q_pi).detach()
    return (lam * torch.exp(positive - positive.mean())).clamp(WEIGHT_MIN, WEIGHT_MAX)


def weighted_flow_matching_loss(
    velocity_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    obs: torch.Tensor,
    action: torch.Tensor,
    a0: torch.Tensor,
    t: torch.Tensor,
    weights: torch.Tensor,
    weighting: str = "batch",
) -> torch.Tensor:
    """Conditional flow matching on buffer actions, weighted.

    a_t = t·a + (1 − t)·a0 with t ~ U(0, 1) ([B, 1]) and a0 the clamped noise, both drawn by the
    caller (``FlowRL.actor_step``); the target velocity is a − a0; ``action`` is already in the ODE's
    space (see the module docstring). Per sample the error is the mean over action dimensions of
    (v − (a − a0))².

    - ``"batch"`` (reference code, default): mean_i(w_i) · mean_i(err_i) — the weights scale one
      batch-mean loss, so in effect a single scalar weight;
    - ``"sample"`` (paper): mean_i(w_i · err_i) — each sample weighted by its own advantage.
    """
    a_t = t * action + (1.0 - t) * a0
    error = ((velocity_fn(obs, a_t, t) - (action - a0)) ** 2).mean(dim=-1)
    if weighting == "batch":
        return (weights * error.mean()).mean()
    if weighting == "sample":
        return (weights * error).mean()
    raise ValueError(f"unknown cfm weighting {weighting!r}; choose 'batch' or 'sample'")


def actor_loss(min_q_pi: torch.Tensor, flow_matching_loss: torch.Tensor) -> torch.Tensor:
    """−mean min Q^π(s, π(s)) plus the weighted flow-matching regulariser."""
    return -min_q_pi.mean() + flow_matching_loss
