"""The policy spec: everything needed to rebuild and run a FlowRL policy, as plain JSON.

It travels inside every checkpoint and (as the policy contract) inside every exported ONNX
file, so that each stage reads the previous stage's artifact, never its in-memory objects.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from flowrl_deploy.errors import SpecError
from flowrl_deploy.fieldtypes import is_int, wrong_type

SOLVERS = ("midpoint", "euler")
ACTIVATIONS = ("elu",)
SPEC_VERSION = 1
MAX_FLOW_STEPS = 1000
"""The most ODE steps N a policy may sample with, in training, export and serving alike (a typo such
as 100000 would otherwise build and run a graph for ages)."""


@dataclass(frozen=True)
class PolicySpec:
    """Shape, bounds and sampler of a flow policy.

    The policy integrates a velocity field v(s, a_t, t) from a0 ~ N(0, I) clamped to
    [-noise_clip, noise_clip] at t = 0 to t = 1 in ``flow_steps`` fixed steps of ``solver``,
    then applies tanh and rescales affinely to [action_low, action_high].
    """

    obs_dim: int
    act_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    hidden: int = 512
    activation: str = "elu"
    solver: str = "midpoint"
    flow_steps: int = 1
    noise_clip: float = 1.0
    env_id: str = ""
    obs_layout: tuple[tuple[str, int], ...] = ()
    """(name, size) of each observation block, in the order they are concatenated."""
    action_names: tuple[str, ...] = ()
    control_period_s: float = 0.0
    """Seconds between two actions in the environment (physics dt × action repeat); 0 if unknown."""
    spec_version: int = field(default=SPEC_VERSION)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`SpecError` naming the first field of the wrong type or with an impossible value."""
        wrong = wrong_type(self)
        if wrong is not None:
            name, expected = wrong
            raise SpecError(f"{name} must be {expected}, got {getattr(self, name)!r}")
        if self.obs_dim < 1 or self.act_dim < 1:
            raise SpecError(f"obs_dim and act_dim must be >= 1, got {self.obs_dim} and {self.act_dim}")
        for name in ("action_low", "action_high"):
            bounds = getattr(self, name)
            if len(bounds) != self.act_dim:
                raise SpecError(f"{name} has {len(bounds)} entries, expected act_dim={self.act_dim}")
            if not all(math.isfinite(b) for b in bounds):
                raise SpecError(f"{name} must be finite, got {bounds}")
        if any(lo >= hi for lo, hi in zip(self.action_low, self.action_high, strict=True)):
            raise SpecError("every action_low must be below its action_high")
        if self.solver not in SOLVERS:
            raise SpecError(f"unknown solver {self.solver!r}; choose one of {', '.join(SOLVERS)}")
        if self.activation not in ACTIVATIONS:
            raise SpecError(f"unknown activation {self.activation!r}; supported: {', '.join(ACTIVATIONS)}")
        if not 1 <= self.flow_steps <= MAX_FLOW_STEPS:
            raise SpecError(f"flow_steps must lie in [1, {MAX_FLOW_STEPS}], got {self.flow_steps}")
        if not (math.isfinite(self.noise_clip) and self.noise_clip > 0):
            raise SpecError(f"noise_clip must be a finite number > 0, got {self.noise_clip!r}")
        if self.hidden < 1:
            raise SpecError(f"hidden must be >= 1, got {self.hidden}")
        if self.obs_layout and sum(size for _, size in self.obs_layout) != self.obs_dim:
            raise SpecError("obs_layout sizes do not add up to obs_dim")
        if self.action_names and len(self.action_names) != self.act_dim:
            raise SpecError(f"{len(self.action_names)} action_names for act_dim={self.act_dim}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["obs_layout"] = [list(item) for item in self.obs_layout]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicySpec:
        """Build a spec from JSON data, with a clear error for missing or unknown fields."""
        if not isinstance(data, dict):
            raise SpecError(f"a policy spec must be a JSON object, got {type(data).__name__}")
        version = data.get("spec_version", SPEC_VERSION)
        if not is_int(version):
            raise SpecError(f"spec_version must be an integer, got {version!r}")
        if version > SPEC_VERSION:
            raise SpecError(
                f"policy spec version {data['spec_version']} is newer than this flowrl-deploy "
                f"understands ({SPEC_VERSION}); upgrade flowrl-deploy"
            )
        known = {f.name for f in fields(cls)}
        missing = {"obs_dim", "act_dim", "action_low", "action_high"} - data.keys()
        if missing:
            raise SpecError(f"policy spec lacks {', '.join(sorted(missing))}")
        kwargs = {k: v for k, v in data.items() if k in known}
        try:
            kwargs["action_low"] = tuple(float(x) for x in kwargs["action_low"])
            kwargs["action_high"] = tuple(float(x) for x in kwargs["action_high"])
            kwargs["obs_layout"] = tuple((str(n), int(s)) for n, s in kwargs.get("obs_layout", ()))
            kwargs["action_names"] = tuple(str(n) for n in kwargs.get("action_names", ()))
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise SpecError(f"malformed policy spec: {exc}") from exc
