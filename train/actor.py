"""The flow actor: noise → ODE over the velocity field → tanh → rescale to the action bounds; and a
checkpoint's actor loaded (:func:`load_actor`) and sampled with the seeded noise of its export
(:func:`actor_act_fn`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from flowrl_deploy.checkpoint import check_actor, load_checkpoint
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.fieldtypes import is_integer, shown
from flowrl_deploy.noise import draw_noise, session_noise
from flowrl_deploy.policy import one_observation
from flowrl_deploy.spec import PolicySpec, flow_steps_problem
from flowrl_deploy.train.ode import integrate
from flowrl_deploy.train.velocity import VelocityField


class FlowActor(nn.Module):
    """π(s): a0 = :meth:`initial_state` of N(0, I) noise, integrated by the solver, squashed and rescaled.

    ``num_steps`` and ``solver`` default to the spec's (training uses N = 1, as in the paper);
    the same network samples with any N afterwards, since v is continuous in t.
    """

    def __init__(self, spec: PolicySpec) -> None:
        super().__init__()
        self.spec = spec
        self.velocity = VelocityField(spec.obs_dim, spec.act_dim, spec.hidden)
        low = torch.tensor(spec.action_low, dtype=torch.float32)
        high = torch.tensor(spec.action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2, persistent=False)
        self.register_buffer("action_bias", (high + low) / 2, persistent=False)

    @classmethod
    def from_numpy(
        cls, spec: PolicySpec, tensors: Mapping[str, np.ndarray], source: str | os.PathLike[str] = ""
    ) -> FlowActor:
        """A CPU float32 FlowActor for ``spec`` holding ``tensors`` (a saved ``state_dict``), checked as
        :meth:`load_numpy` checks them."""
        actor = cls(spec)
        actor.load_numpy(tensors, source)
        return actor

    def load_numpy(self, tensors: Mapping[str, np.ndarray], source: str | os.PathLike[str] = "") -> None:
        """Copy ``tensors`` (a saved ``state_dict``) into the weights; a one-line :class:`CheckpointError`
        (:func:`check_actor`, beginning with ``source``, the checkpoint, when given) when they are not the finite
        weights of this spec's network (torch's is a page long)."""
        check_actor(tensors, self.spec, source)
        self.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in tensors.items()})

    def sample_noise(self, batch: int) -> torch.Tensor:
        return torch.randn(batch, self.spec.act_dim, device=self.action_scale.device)

    def initial_state(self, noise: torch.Tensor) -> torch.Tensor:
        """The ODE's a0 at t = 0: ``noise`` clamped to [-noise_clip, noise_clip] (``PolicySpec``, 1 by default)."""
        return noise.clamp(-self.spec.noise_clip, self.spec.noise_clip)

    def pre_tanh(
        self, obs: torch.Tensor, noise: torch.Tensor, num_steps: int | None = None, solver: str | None = None
    ) -> torch.Tensor:
        """The ODE's value at t = 1, before the squashing; ``noise`` is unclamped (see :meth:`initial_state`)."""
        a0 = self.initial_state(noise)
        num_steps = self.spec.flow_steps if num_steps is None else num_steps  # 0 is refused, not the default
        return integrate(self.velocity, obs, a0, num_steps, self.spec.solver if solver is None else solver)

    def squash(self, pre_tanh: torch.Tensor) -> torch.Tensor:
        """tanh, then the affine map from [-1, 1] to [action_low, action_high]."""
        return torch.tanh(pre_tanh) * self.action_scale + self.action_bias

    def forward(
        self,
        obs: torch.Tensor,
        noise: torch.Tensor | None = None,
        num_steps: int | None = None,
        solver: str | None = None,
    ) -> torch.Tensor:
        """Actions for ``obs``; draws fresh noise unless ``noise`` pins it."""
        if noise is None:
            noise = self.sample_noise(obs.shape[0])
        return self.squash(self.pre_tanh(obs, noise, num_steps, solver))

    def to_normalized(self, action: torch.Tensor) -> torch.Tensor:
        """Map env-scale actions back to [-1, 1] (the tanh range), e.g. buffer actions for flow matching."""
        return (action - self.action_bias) / self.action_scale


def load_actor(path: str | Path, device: torch.device | str = "cpu") -> FlowActor:
    """The flow actor of a checkpoint, in eval mode, on ``device``. Loading leaves torch's global RNG
    as it was (the network's random initialisation, which the checkpoint's weights replace, draws from a fork)."""
    checkpoint = load_checkpoint(path)
    with torch.random.fork_rng(devices=[]):  # the actor is made on the CPU, and only then moved to ``device``
        actor = FlowActor.from_numpy(checkpoint.spec, checkpoint.actor, checkpoint.path)
    return actor.to(device).eval()


def actor_act_fn(
    actor: FlowActor, seed: int = 0, num_steps: int | None = None, deterministic: bool = False
) -> Callable[[np.ndarray], np.ndarray]:
    """``act(obs [obs_dim]) -> action`` sampling ``actor`` with ``num_steps`` (default: its spec's).

    Its noise is drawn as :class:`~flowrl_deploy.policy.SeededPolicy` (and so ``flowrl eval`` of
    an ONNX export, a server session, a client's local fallback) draws it: numpy
    ``session_noise(seed)``, one float32 ``draw_noise`` block [1, act_dim] per action, moved to the
    actor's device. So a checkpoint and its export with the same seed play the same episodes (their
    actions equal to the export's parity tolerance), acting never shifts torch's global RNG, and a
    seed gives the same noise on a GPU as on the CPU. ``deterministic`` starts every ODE from
    a0 = 0 instead (the deterministic export).

    As :class:`~flowrl_deploy.policy.SeededPolicy` does, it refuses with a :class:`FlowRLError` a
    ``num_steps`` outside [1, 1000] or a seed that is no uint64 here, and an observation other than
    [obs_dim] finite numbers at the act (:class:`~flowrl_deploy.codec.TensorError`)."""
    if num_steps is not None:
        if not is_integer(num_steps):
            raise FlowRLError(f"flow_steps must be a whole number, got {shown(num_steps)}")
        problem = flow_steps_problem("flow_steps", num_steps)
        if problem:
            raise FlowRLError(problem)
    device = next(actor.parameters()).device
    generator = session_noise(seed)

    @torch.no_grad()
    def act(obs: np.ndarray) -> np.ndarray:
        obs_t = torch.as_tensor(one_observation(obs, actor.spec.obs_dim), device=device)
        if deterministic:
            noise = torch.zeros(1, actor.spec.act_dim, device=device)
        else:
            noise = torch.from_numpy(draw_noise(generator, 1, actor.spec.act_dim)).to(device)
        return actor(obs_t, noise, num_steps=num_steps)[0].float().cpu().numpy()

    return act
