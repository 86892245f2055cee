"""Training's side of the one checkpoint format (``flowrl_deploy.checkpoint``): which checkpoints a
run keeps, and rebuilding a flow actor from one."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from flowrl_deploy.checkpoint import BEST, CHECKPOINTS_DIR, LAST, link_checkpoint, load_checkpoint
from flowrl_deploy.errors import CheckpointError
from flowrl_deploy.train.actor import FlowActor


def step_name(step: int) -> str:
    return f"step_{step:09d}"


class RunCheckpoints:
    """The ``checkpoints/`` directory of a run.

    Every save writes ``step_XXXXXXXXX`` and points ``last`` at it, and ``best``
    too when it holds the best evaluation so far. Periodic checkpoints (multiples of
    ``save_every``) are kept; any other step directory is removed once neither link names it,
    and so is what a save cut short by a crash left behind (``.step_*.tmp-*``).
    The directory is made at once, so that a file in its way fails before training, not at the first save.
    """

    def __init__(self, run_dir: str | Path, save_every: int) -> None:
        self.dir = Path(run_dir) / CHECKPOINTS_DIR
        self.save_every = save_every
        self._written: int | None = None
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"cannot create the checkpoints folder {self.dir}: {exc.strerror or exc}") from exc

    def save(self, step: int, write: Callable[[Path], object], *, best: bool = False) -> Path:
        """Write the checkpoint of ``step`` with ``write(path)`` (once, if asked twice at one step)
        and move the links."""
        path = self.dir / step_name(step)
        if self._written != step:
            write(path)
            self._written = step
        link_checkpoint(self.dir, LAST, path)
        if best:
            link_checkpoint(self.dir, BEST, path)
        self._prune()
        return path

    def _is_periodic(self, path: Path) -> bool:
        step = int(path.name.removeprefix("step_"))
        return self.save_every > 0 and step % self.save_every == 0

    def _prune(self) -> None:
        linked = {(self.dir / name).resolve() for name in (LAST, BEST) if (self.dir / name).exists()}
        for path in self.dir.glob("step_*"):
            if path.resolve() not in linked and not self._is_periodic(path):
                shutil.rmtree(path, ignore_errors=True)
        for partial in self.dir.glob(".step_*.tmp-*"):
            shutil.rmtree(partial, ignore_errors=True)


def load_actor(path: str | Path, device: torch.device | str = "cpu") -> FlowActor:
    """The flow actor of a checkpoint, in eval mode, on ``device``."""
    checkpoint = load_checkpoint(path)
    for key, value in checkpoint.actor.items():
        if not np.isfinite(value).all():
            raise CheckpointError(
                f"{checkpoint.path}: actor tensor {key} holds NaN or infinite values (training diverged?)"
            )
    try:
        actor = FlowActor.from_numpy(checkpoint.spec, checkpoint.actor)
    except CheckpointError as exc:
        raise CheckpointError(f"{checkpoint.path}: {exc}") from exc
    return actor.to(device).eval()


def actor_act_fn(
    actor: FlowActor, seed: int = 0, num_steps: int | None = None, deterministic: bool = False
) -> Callable[[np.ndarray], np.ndarray]:
    """``act(obs [obs_dim]) -> action`` sampling ``actor`` with ``num_steps`` (default: its spec's),
    its noise drawn from a CPU generator of its own (seeded ``seed``), so acting never shifts torch's
    global RNG and a seed gives the same noise on a GPU as on the CPU. ``deterministic`` starts every
    ODE from a0 = 0 instead (the deterministic export)."""
    device = next(actor.parameters()).device
    generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def act(obs: np.ndarray) -> np.ndarray:
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(0)
        if deterministic:
            noise = torch.zeros(1, actor.spec.act_dim, device=device)
        else:
            noise = torch.randn(1, actor.spec.act_dim, generator=generator).to(device)
        return actor(obs_t, noise, num_steps=num_steps)[0].float().cpu().numpy()

    return act
