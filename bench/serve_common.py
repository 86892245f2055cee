"""Shared by the serve benchmarks: a dog-run-shaped policy file, latency figures, the machine."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

DOG_RUN = {"obs_dim": 223, "act_dim": 38, "hidden": 512}


def random_policy(out: Path, obs_dim: int, act_dim: int, hidden: int, env_id: str, steps: int = 10) -> Path:
    """Export a random (untrained) FlowActor of these shapes with ``steps`` flow steps to ``out``; cached."""
    if out.exists():
        return out
    import torch

    from flowrl_deploy.checkpoint import save_checkpoint
    from flowrl_deploy.export import ExportConfig, export_checkpoint
    from flowrl_deploy.spec import PolicySpec
    from flowrl_deploy.train.actor import FlowActor

    torch.set_num_threads(1)
    torch.manual_seed(0)
    bounds = (-1.0,) * act_dim, (1.0,) * act_dim
    spec = PolicySpec(obs_dim, act_dim, *bounds, hidden=hidden, env_id=env_id)
    actor = {k: v.detach().numpy() for k, v in FlowActor(spec).state_dict().items()}
    checkpoint = save_checkpoint(out.with_suffix(".ckpt"), spec=spec, actor=actor)
    export_checkpoint(checkpoint, out, ExportConfig(steps=steps, samples=8))
    return out


def dog_run_model(out_dir: Path, steps: int = 10) -> Path:
    """A random dog-run-shaped policy (obs 223, act 38, width 512)."""
    return random_policy(out_dir / f"dog_run_random_{steps}steps.onnx", env_id="dmc:dog-run", steps=steps, **DOG_RUN)


def figures(samples_us: list[float]) -> dict[str, float]:
    """p50, p99, p99.9 and mean of latencies in µs."""
    a = np.asarray(samples_us, dtype=np.float64)
    p50, p99, p999 = np.percentile(a, [50, 99, 99.9])
    return {"p50_us": float(p50), "p99_us": float(p99), "p999_us": float(p999), "mean_us": float(a.mean()), "n": len(a)}


def machine() -> dict[str, str]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version()}
