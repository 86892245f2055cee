"""Checkpoint directories with a stand-in exporter: serving a run directory without torch.

The stand-in writes the tiny policy (``tiny_policy.write_policy``) with the requested flow steps
and a weight scale equal to the checkpoint's step counter (or the ``weight_scale`` it was saved
with), so each checkpoint serves a distinct model version, and it records which checkpoint it
exported at which N.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tiny_policy import write_policy

from flowrl_deploy.checkpoint import CHECKPOINTS_DIR, LAST, link_checkpoint, read_document, resolve_checkpoint
from flowrl_deploy.checkpoint import save_checkpoint as _save
from flowrl_deploy.spec import PolicySpec

TRAINED_STEPS = 2
"""The checkpoints' training flow steps (spec.flow_steps)."""


def save_step(run: Path, step: int, *, link: bool = True, weight_scale: int | None = None) -> Path:
    """Write ``run/checkpoints/step_<step>`` and (with ``link``) point ``last`` at it; a
    ``weight_scale`` makes it export another model than the step's own."""
    spec = PolicySpec(obs_dim=3, act_dim=2, action_low=(-1.0, -2.0), action_high=(1.0, 2.0), flow_steps=TRAINED_STEPS)
    checkpoints = run / CHECKPOINTS_DIR
    path = _save(
        checkpoints / f"step_{step:09d}",
        spec=spec,
        actor={"w": np.zeros(1, np.float32)},
        counters={"step": step} | ({} if weight_scale is None else {"weight_scale": weight_scale}),
    )
    if link:
        link_checkpoint(checkpoints, LAST, path)
    return path


class FakeExporter:
    """An exporter for ``PolicyServer(config, export_checkpoint=...)`` that needs no torch; ``calls``
    holds (checkpoint, steps)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Path, int]] = []

    def __call__(self, checkpoint: Path, out: Path, steps: int | None) -> Path:
        document = read_document(checkpoint)
        steps = steps or document["spec"]["flow_steps"]  # None: the training N, as the exporter does
        out.parent.mkdir(parents=True, exist_ok=True)
        counters = document["counters"]
        write_policy(out, scale=float(counters.get("weight_scale", counters["step"])), flow_steps=steps)
        self.calls.append((resolve_checkpoint(checkpoint), steps))
        return out
