"""Every hyperparameter of a FlowRL run, in one frozen dataclass mapped 1:1 to `flowrl train` flags.

Defaults follow the paper (arXiv 2506.12811) and its reference code. The config is written to
``<out>/config.json`` before step 0 and stored inside every checkpoint.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.fieldtypes import wrong_type
from flowrl_deploy.spec import SOLVERS

CFM_WEIGHTINGS = ("batch", "sample")
DEVICES = ("auto", "cpu", "cuda")
CONFIG_FILE = "config.json"


class ConfigError(FlowRLError):
    """A training setting is out of range or a config file cannot be read."""


def flag(name: str) -> str:
    """The ``flowrl train`` flag of a config field: ``batch_size`` → ``--batch-size``."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class TrainConfig:
    # --- run ---
    env: str = "dmc:cheetah-run"
    """Task: 'dmc:<domain>-<task>' (dm_control) or a gymnasium id such as 'h1-walk-v0'."""
    steps: int = 1_000_000
    """Environment steps to train for (one gradient update per step after the warm-up)."""
    seed: int = 0
    """Seeds torch, numpy, the replay sampler and the environments' task randomness."""
    out: str = "runs/flowrl"
    """Run directory: config.json, metrics, TensorBoard events and checkpoints/."""

    # --- networks ---
    hidden: int = 512
    """Width of every hidden layer (velocity field, both twin critics, value net)."""
    flow_steps: int = 1
    """ODE steps N of the flow policy while training (the paper uses 1); any N works afterwards."""
    solver: str = "midpoint"
    """ODE solver of the flow policy: 'midpoint' or 'euler'."""

    # --- FlowRL ---
    gamma: float = 0.99
    """Discount γ."""
    lr: float = 3e-4
    """Adam learning rate of every network."""
    tau: float = 0.95
    """Share of the target critics kept at each target update (the reference config's `tau: 0.95`):
    every `policy_delay` updates θ̄ ← tau·θ̄ + (1 − tau)·θ, an EMA moving 5 % toward the online
    weights. Read as "95 % toward the online weights" instead (``--tau 0.05`` here), cartpole-swingup
    at 40k steps gave 317 / 835 (mean 576) against 682 / 652 (mean 667); see bench/results."""
    policy_delay: int = 2
    """Actor and target updates happen once every this many critic updates."""
    lam: float = 0.1
    """λ: scale of the flow-matching weight, λ·exp(A⁺ − mean A⁺), clamped to [1e-3, 1]."""
    expectile: float = 0.9
    """Expectile τ of the value regression V(s) toward min Q̄^β(s, a) at buffer actions."""
    cfm_weighting: str = "batch"
    """'batch': the reference code (per-sample weights times the batch-mean flow-matching loss);
    'sample': the paper (each sample's flow-matching error weighted by its own weight)."""

    # --- data ---
    batch_size: int = 256
    """Transitions per gradient update."""
    buffer_size: int = 1_000_000
    """Replay capacity (transitions)."""
    start_steps: int = 5000
    """Warm-up steps of uniformly random actions before the first update."""
    recent_fraction: float = 0.2
    """Share of each batch drawn from the most recent `recent_window` transitions."""
    recent_window: int = 2048
    """Size of the 'recent' window of the replay buffer."""

    # --- evaluation, logging, checkpoints ---
    eval_every: int = 10_000
    """Evaluate every this many env steps (0: never), on a separate environment instance."""
    eval_episodes: int = 5
    """Episodes per evaluation."""
    log_every: int = 1000
    """Write training scalars every this many env steps."""
    save_every: int = 50_000
    """Write a periodic checkpoint every this many env steps (0: only last/best)."""
    save_replay: bool = False
    """Store the replay buffer in checkpoints, so that --resume loses no data (large files)."""

    # --- compute ---
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda'."""
    bf16: bool = False
    """Run network forward passes under bfloat16 autocast."""
    compile: bool = False
    """torch.compile the networks (slower start; no faster at the default sizes, see the README)."""
    cuda_graphs: bool = True
    """On a GPU, replay each update from CUDA graphs (one launch instead of hundreds); not with compile."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming (as its ``flowrl train`` flag) the first setting of the
        wrong type or out of range."""
        wrong = wrong_type(self)
        if wrong is not None:
            name, expected = wrong
            raise ConfigError(f"{flag(name)} must be {expected}, got {getattr(self, name)!r}")
        for field in fields(self):
            if field.type == "float" and not math.isfinite(getattr(self, field.name)):
                raise ConfigError(f"{flag(field.name)} must be a finite number, got {getattr(self, field.name)!r}")
        if not self.out.strip():
            raise ConfigError("--out must name a directory for the run, got an empty string")
        positive = (
            "steps",
            "hidden",
            "flow_steps",
            "batch_size",
            "buffer_size",
            "policy_delay",
            "recent_window",
            "eval_episodes",
            "log_every",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{flag(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("seed", "start_steps", "eval_every", "save_every", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{flag(name)} must be >= 0, got {getattr(self, name)}")
        for name in ("gamma", "tau", "expectile", "recent_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{flag(name)} must lie in [0, 1], got {getattr(self, name)}")
        if self.tau == 1.0:
            raise ConfigError("--tau must be < 1: it is the share of the target critics kept, and at 1 they never move")
        if self.batch_size > self.buffer_size:
            raise ConfigError(f"--batch-size ({self.batch_size}) cannot exceed --buffer-size ({self.buffer_size})")
        for name in ("lr", "lam"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{flag(name)} must be > 0, got {getattr(self, name)}")
        for name, allowed in (("solver", SOLVERS), ("cfm_weighting", CFM_WEIGHTINGS), ("device", DEVICES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{flag(name)} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild a config from JSON, refusing unknown fields (a typo must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config fields: {', '.join(sorted(unknown))}")
        return cls(**data)

    def save(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise ConfigError(f"cannot read a training config from {path}: {exc}") from exc

    def override(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (and validated)."""
        return replace(self, **changes)
