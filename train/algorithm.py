"""FlowRL (Lv et al., 2025, arXiv 2506.12811): the networks, their optimizers, and one update.

Per gradient update, top to bottom, in the reference code's order:

1. Q^π (twin): toward r + γ·mask·min Q̄^π(s', a'), a' ~ π(s') from the current flow policy.
2. Q^β (twin, behavior-optimal critic, which starts as a copy of Q^π as in the reference code):
   toward r + γ·mask·V(s').
3. V: expectile regression toward min Q̄^β(s, a) at buffer actions.
4. Every ``policy_delay`` updates: the actor, −min Q^π(s, π(s)) plus flow matching on buffer
   actions weighted by the advantage Q^β(s, a) − Q^π(s, π(s)), with Q^β(s, a) from step 2's
   forward pass; then both target critics take the step θ̄ ← (1 − tau)·θ̄ + tau·θ toward the online ones.
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager

import numpy as np
import torch
from torch import nn

from flowrl_deploy.errors import CheckpointError
from flowrl_deploy.fieldtypes import is_int
from flowrl_deploy.spec import PolicySpec
from flowrl_deploy.train.actor import FlowActor
from flowrl_deploy.train.config import DEVICES, ConfigError, TrainConfig
from flowrl_deploy.train.critics import TwinQ, ValueNet
from flowrl_deploy.train.cuda_graphs import CudaGraphUpdate
from flowrl_deploy.train.losses import (
    actor_loss,
    buffer_q_loss,
    critic_td_loss,
    expectile_value_loss,
    flow_weights,
    weighted_flow_matching_loss,
)
from flowrl_deploy.train.replay import Batch
from flowrl_deploy.versions import version_problem

TRAINING_STATE_VERSION = 1
"""Layout of the training state (critics, targets, value, Adam moments) this version writes and resumes,
recorded as ``layout_version`` in ``training_state.json``'s ``agent`` object. Bump it whenever that layout
changes, so that a resume refuses another layout by its number before loading a tensor. A state without the
key was written before it existed and is read as layout 1, its tensors' names and shapes checked against the
networks: runs from before the critics took the reference code's LayerNorm blocks (commit 3b7f234) differ
there. The checkpoint's ``format_version`` is another thing: the files and the policy (actor, spec) that
export, eval and serve read, which a training-state layout change leaves alone."""


def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; 'cpu' or 'cuda' as named. Other torch devices
    ('cuda:1', 'mps', 'meta') are refused: pick a GPU with CUDA_VISIBLE_DEVICES."""
    if name not in DEVICES:
        raise ConfigError(
            f"unknown --device {name!r}; use {', '.join(DEVICES[:-1])} or {DEVICES[-1]} "
            "(to pick one of several GPUs, set CUDA_VISIBLE_DEVICES)"
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device; use --device auto or cpu")
    return torch.device(name)


def training_bytes(spec: PolicySpec) -> int:
    """Memory of the networks while training: the weights of all six, plus gradients and Adam's
    two moments of the four trained ones (counted on the meta device, which allocates nothing)."""
    with torch.device("meta"):
        actor, twin_q, value = (
            FlowActor(spec),
            TwinQ(spec.obs_dim, spec.act_dim, spec.hidden),
            ValueNet(spec.obs_dim, spec.hidden),
        )
    actor_n, q_n, value_n = (sum(p.numel() for p in m.parameters()) for m in (actor, twin_q, value))
    trained = actor_n + 2 * q_n + value_n  # actor, Q^π, Q^β, V: weights, gradients, two Adam moments
    return 4 * (4 * trained + 2 * q_n)  # + the two target critics' weights


def soft_update(target: nn.Module, online: nn.Module, rate: float) -> None:
    """Move ``target`` a share ``rate`` of the way to ``online``: θ̄ ← (1 − rate)·θ̄ + rate·θ, all at once."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), rate)


class FlowRL:
    """The FlowRL agent: flow actor, Q^π and Q^β twin critics with targets, value V, Adam for each."""

    NETWORKS = ("actor", "q_pi", "q_pi_target", "q_beta", "q_beta_target", "value")
    OPTIMIZERS = ("actor_opt", "q_pi_opt", "q_beta_opt", "value_opt")

    def __init__(self, spec: PolicySpec, cfg: TrainConfig, device: torch.device | str = "cpu") -> None:
        self.spec, self.cfg, self.device = spec, cfg, torch.device(device)
        self.actor = FlowActor(spec).to(self.device)
        self.q_pi = TwinQ(spec.obs_dim, spec.act_dim, spec.hidden).to(self.device)
        self.q_beta = TwinQ(spec.obs_dim, spec.act_dim, spec.hidden).to(self.device)
        # Q^β starts as a copy of Q^π, as in the reference code (built first, so the RNG stream is as before)
        self.q_beta.load_state_dict(self.q_pi.state_dict())
        self.value = ValueNet(spec.obs_dim, spec.hidden).to(self.device)
        self.q_pi_target = copy.deepcopy(self.q_pi).requires_grad_(False)
        self.q_beta_target = copy.deepcopy(self.q_beta).requires_grad_(False)
        fused = {"fused": True}  # one kernel per optimizer step (CPU and CUDA): ~2.7x faster than foreach here
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr, **fused)
        self.q_pi_opt = torch.optim.Adam(self.q_pi.parameters(), lr=cfg.lr, **fused)
        self.q_beta_opt = torch.optim.Adam(self.q_beta.parameters(), lr=cfg.lr, **fused)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=cfg.lr, **fused)
        self.updates = 0
        if cfg.compile:
            for name in self.NETWORKS:
                getattr(self, name).compile()
        self._graphed = self._cuda_graphs()

    def _cuda_graphs(self) -> CudaGraphUpdate | None:
        use = self.cfg.cuda_graphs and self.device.type == "cuda" and not self.cfg.compile
        return CudaGraphUpdate(self) if use else None

    def _autocast(self) -> AbstractContextManager:
        capturing = self.device.type == "cuda" and torch.cuda.is_current_stream_capturing()
        # autocast's cache of cast weights must not outlive a CUDA graph capture
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16, cache_enabled=not capturing
        )

    @staticmethod
    def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient update; returns detached 0-d tensors (call float() only when logging:
        reading one waits for the GPU). On a GPU it is replayed from CUDA graphs
        (``cuda_graphs``), which run the same steps as :meth:`eager_update`."""
        return self._graphed(batch) if self._graphed is not None else self.eager_update(batch)

    def eager_update(self, batch: Batch) -> dict[str, torch.Tensor]:
        obs, action, reward, next_obs, mask = (torch.as_tensor(x, device=self.device) for x in batch)
        metrics, min_q_beta = self.critic_step(obs, action, reward, next_obs, mask)
        if self.count_update():
            metrics.update(self.actor_step(obs, action, min_q_beta))
        return metrics

    def count_update(self) -> bool:
        """Count one update; True when it is one of every ``policy_delay`` (the first included) that
        also takes the actor step. The eager and the CUDA-graph updates both follow this schedule."""
        due = self.updates % self.cfg.policy_delay == 0
        self.updates += 1
        return due

    def critic_step(
        self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, next_obs: torch.Tensor, mask: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Steps 1–3 (Q^π, Q^β, V); returns their metrics and min Q^β(s, a) for the actor step."""
        cfg = self.cfg
        with self._autocast():
            # ALGO LOGIC: Q^π toward r + γ·mask·min Q̄^π(s', a'), a' from the current flow policy
            with torch.no_grad():
                next_action = self.actor(next_obs)
                next_min_q = self.q_pi_target.min_q(next_obs, next_action)
            q_pi = self.q_pi(obs, action)
            q_pi_loss = critic_td_loss(q_pi, reward, mask, next_min_q, cfg.gamma)
            self._step(self.q_pi_opt, q_pi_loss)

            # ALGO LOGIC: Q^β toward r + γ·mask·V(s')
            with torch.no_grad():
                next_v = self.value(next_obs)
            q_beta = self.q_beta(obs, action)
            q_beta_loss = buffer_q_loss(q_beta, reward, mask, next_v, cfg.gamma)
            self._step(self.q_beta_opt, q_beta_loss)

            # ALGO LOGIC: V by expectile regression toward min Q̄^β(s, a) at buffer actions
            with torch.no_grad():
                min_q_beta_target = self.q_beta_target.min_q(obs, action)
            value_loss = expectile_value_loss(self.value(obs), min_q_beta_target, cfg.expectile)
            self._step(self.value_opt, value_loss)
        metrics = {"q_pi_loss": q_pi_loss, "q_beta_loss": q_beta_loss, "value_loss": value_loss, "q_pi": q_pi.mean()}
        return {k: v.detach() for k, v in metrics.items()}, q_beta.detach().min(dim=0).values

    def actor_step(self, obs: torch.Tensor, action: torch.Tensor, min_q_beta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Step 4 (every ``policy_delay`` updates): the actor, then both target critics."""
        # ALGO LOGIC: actor = −min Q^π(s, π(s)) + flow matching weighted by Q^β(s, a) − Q^π(s, π(s))
        cfg = self.cfg
        with self._autocast():
            self.q_pi.requires_grad_(False)  # gradients flow through Q^π into π, not into Q^π's weights
            min_q_pi = self.q_pi.min_q(obs, self.actor(obs))
            self.q_pi.requires_grad_(True)
            with torch.no_grad():
                weights = flow_weights(min_q_beta, min_q_pi, cfg.lam)
            a0 = self.actor.initial_state(self.actor.sample_noise(obs.shape[0]))
            t = torch.rand(obs.shape[0], 1, device=self.device)
            target_action = self.actor.to_normalized(action).clamp(-1.0, 1.0)
            fm_loss = weighted_flow_matching_loss(
                self.actor.velocity, obs, target_action, a0, t, weights, cfg.cfm_weighting
            )
            loss = actor_loss(min_q_pi, fm_loss)
            self._step(self.actor_opt, loss)
        soft_update(self.q_pi_target, self.q_pi, cfg.tau)  # θ̄ ← (1 − tau)·θ̄ + tau·θ
        soft_update(self.q_beta_target, self.q_beta, cfg.tau)
        metrics = {"actor_loss": loss, "flow_matching_loss": fm_loss, "flow_weight": weights.mean()}
        return {k: v.detach() for k, v in metrics.items()}

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """One action for one observation [obs_dim], sampled with the training flow steps."""
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(0)
        return self.actor(obs_t)[0].float().cpu().numpy()

    # --- checkpoint state: flat numpy tensors plus JSON ---

    def state_tensors(self) -> dict[str, np.ndarray]:
        """Every network (but the actor, stored as the model), Adam moments and torch RNG states."""
        tensors: dict[str, torch.Tensor] = {}
        for name in self.NETWORKS[1:]:
            tensors.update({f"{name}.{k}": v for k, v in getattr(self, name).state_dict().items()})
        for name in self.OPTIMIZERS:
            for index, state in getattr(self, name).state_dict()["state"].items():
                tensors.update({f"{name}.{index}.{k}": v for k, v in state.items()})
        tensors["rng.torch_cpu"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng.torch_cuda"] = torch.cuda.get_rng_state(self.device)
        return {k: v.detach().cpu().numpy().copy() for k, v in tensors.items()}  # a snapshot, not a view

    def state_json(self) -> dict:
        return {
            "layout_version": TRAINING_STATE_VERSION,
            "updates": self.updates,
            "param_groups": {name: getattr(self, name).state_dict()["param_groups"] for name in self.OPTIMIZERS},
        }

    def load_state(self, actor: dict[str, np.ndarray], tensors: dict[str, np.ndarray], state: dict) -> None:
        """Restore what :meth:`state_tensors` / :meth:`state_json` saved (and the actor's weights).

        A state of another layout (:data:`TRAINING_STATE_VERSION`) is refused in one line saying what
        differs and what still works, before any critic or optimizer is touched.
        """
        self._check_layout_version(state)
        try:
            self.actor.load_numpy(actor)
            self._check_layout(tensors, state)
            for name in self.NETWORKS[1:]:
                getattr(self, name).load_state_dict(_to_torch(tensors, f"{name}."))
            for name in self.OPTIMIZERS:
                optimizer = getattr(self, name)
                moments: dict[int, dict[str, torch.Tensor]] = {}
                for key, value in _to_torch(tensors, f"{name}.").items():
                    index, field = key.split(".", 1)
                    moments.setdefault(int(index), {})[field] = value
                optimizer.load_state_dict({"state": moments, "param_groups": state["param_groups"][name]})
            torch.set_rng_state(torch.as_tensor(tensors["rng.torch_cpu"]))
            if self.device.type == "cuda" and "rng.torch_cuda" in tensors:
                torch.cuda.set_rng_state(torch.as_tensor(tensors["rng.torch_cuda"]), self.device)
            self.updates = int(state["updates"])
            self._graphed = self._cuda_graphs()  # Adam's state tensors are new: capture again
        except (KeyError, RuntimeError, ValueError) as exc:
            reason = " ".join(str(exc).split())  # torch's messages span lines
            raise CheckpointError(f"training state does not match this run's networks: {reason:.400}") from exc

    @staticmethod
    def _check_layout_version(state: dict) -> None:
        version = state.get("layout_version", 1) if isinstance(state, dict) else 1
        if problem := version_problem(version, "layout_version", TRAINING_STATE_VERSION):
            newer = is_int(version) and version > TRAINING_STATE_VERSION
            raise CheckpointError(f"training state: {problem}" + (f" to resume it ({_STILL_WORKS})" if newer else ""))

    def _check_layout(self, tensors: dict[str, np.ndarray], state: dict) -> None:
        version = state.get("layout_version")
        differences = _layout_differences(
            {name: getattr(self, name).state_dict() for name in self.NETWORKS[1:]}, tensors
        )
        if differences:
            writer = "an older" if version is None or version < TRAINING_STATE_VERSION else "another"
            raise CheckpointError(
                f"training state was written by {writer} flowrl-deploy whose critics have another layout: "
                f"{_STILL_WORKS}; to train on, start a new run (flowrl train --out NEW_DIR), or resume with the "
                f"flowrl-deploy version that wrote it (differs: {differences})"
            )


_STILL_WORKS = "its checkpoints can still be exported, evaluated and served, not resumed by this version"


def _layout_differences(expected: dict[str, dict[str, torch.Tensor]], tensors: dict[str, np.ndarray]) -> str:
    """The parameters of ``tensors`` that do not fit the networks' state dicts, summarized in one line
    (networks with the same differences, such as a critic and its target, named together); "" when all fit."""
    found: dict[str, list[str]] = {}
    for name, state in expected.items():
        prefix = f"{name}."
        got = {k[len(prefix) :]: tuple(v.shape) for k, v in tensors.items() if k.startswith(prefix)}
        want = {k: tuple(v.shape) for k, v in state.items()}
        parts = []
        if missing := [k for k in want if k not in got]:
            parts.append(f"missing {_some(missing)}")
        if unexpected := [k for k in got if k not in want]:
            parts.append(f"unexpected {_some(unexpected)}")
        if reshaped := [f"{k} {list(got[k])} here {list(want[k])}" for k in want if k in got and got[k] != want[k]]:
            parts.append(f"other shape {_some(reshaped, 2)}")
        if parts:
            found.setdefault(", ".join(parts), []).append(name)
    return "; ".join(f"{'/'.join(names)}: {parts}" for parts, names in found.items())


def _some(items: list[str], most: int = 3) -> str:
    more = f" and {len(items) - most} more" if len(items) > most else ""
    return ", ".join(items[:most]) + more


def _to_torch(tensors: dict[str, np.ndarray], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: torch.from_numpy(np.array(v)) for k, v in tensors.items() if k.startswith(prefix)}
