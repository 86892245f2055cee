"""The policy spec: everything needed to rebuild and run a FlowRL policy, as plain JSON.

It travels inside every checkpoint and (as the policy contract) inside every exported ONNX
file, so that each stage reads the previous stage's artifact, never its in-memory objects.
"""

from __future__ import annotations

import math
import struct
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
FLOAT32_MAX = 3.4028234663852886e38
"""The largest float32. The sampler runs in float32 (torch and the exported graph alike), so a bound,
its range and midpoint, and the noise clip must fit: beyond, the graph outputs only NaN."""


def obs_layout_problem(layout: tuple[tuple[str, int], ...], obs_dim: int) -> str | None:
    """What is wrong with an observation layout ((name, size) blocks in order), or None: every size
    an integer >= 1, and together obs_dim (an empty layout says nothing, and is fine)."""
    sizes = [size for _, size in layout]
    if sizes and (not all(is_int(size) for size in sizes) or min(sizes) < 1 or sum(sizes) != obs_dim):
        return (
            f"obs_layout has block sizes {sizes}: each must be an integer >= 1 and together they must "
            f"add up to obs_dim = {obs_dim}"
        )
    return None


def float32_bounds_problem(low: tuple[float, ...], high: tuple[float, ...]) -> str | None:
    """What float32 cannot hold in finite action bounds with low < high (the first found), as
    "action_high[0] = 1e+39 does not fit float32 ..."; None when they all fit. The graph rescales
    tanh's output by (high - low)/2 and (high + low)/2, computed in float32."""
    for name, bounds in (("action_low", low), ("action_high", high)):
        for i, bound in enumerate(bounds):
            if abs(bound) > FLOAT32_MAX:
                return (
                    f"{name}[{i}] = {bound:g} does not fit float32 (|x| <= {FLOAT32_MAX:.4g}), which the policy runs in"
                )
    for i, (lo, hi) in enumerate(zip(low, high, strict=True)):
        if hi - lo > FLOAT32_MAX or abs(hi + lo) > FLOAT32_MAX:
            return (
                f"action_low[{i}] = {lo:g} and action_high[{i}] = {hi:g} have a range or sum beyond float32 "
                f"(|x| <= {FLOAT32_MAX:.4g}), in which the policy rescales its actions"
            )
        if struct.pack("f", lo) == struct.pack("f", hi):
            return (
                f"action_low[{i}] = {lo!r} and action_high[{i}] = {hi!r} are the same float32, in which the "
                f"policy rescales its actions: every action would be that value"
            )
    return None


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
        problem = float32_bounds_problem(self.action_low, self.action_high)
        if problem is not None:
            raise SpecError(problem)
        if self.solver not in SOLVERS:
            raise SpecError(f"unknown solver {self.solver!r}; choose one of {', '.join(SOLVERS)}")
        if self.activation not in ACTIVATIONS:
            raise SpecError(f"unknown activation {self.activation!r}; supported: {', '.join(ACTIVATIONS)}")
        if not 1 <= self.flow_steps <= MAX_FLOW_STEPS:
            raise SpecError(f"flow_steps must lie in [1, {MAX_FLOW_STEPS}], got {self.flow_steps}")
        if not (math.isfinite(self.noise_clip) and self.noise_clip > 0):
            raise SpecError(f"noise_clip must be a finite number > 0, got {self.noise_clip!r}")
        if self.noise_clip > FLOAT32_MAX:
            raise SpecError(
                f"noise_clip must fit float32 (<= {FLOAT32_MAX:.4g}), in which the noise is clamped, "
                f"got {self.noise_clip:g}"
            )
        if self.hidden < 1:
            raise SpecError(f"hidden must be >= 1, got {self.hidden}")
        problem = obs_layout_problem(self.obs_layout, self.obs_dim)
        if problem is not None:
            raise SpecError(problem)
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
        unknown = sorted(set(data) - known)
        if unknown:  # a misspelt field ("hiden") would otherwise fall back to its default unseen
            raise SpecError(f"policy spec has unknown fields {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        kwargs = dict(data)
        try:
            kwargs["action_low"] = tuple(float(x) for x in kwargs["action_low"])
            kwargs["action_high"] = tuple(float(x) for x in kwargs["action_high"])
            kwargs["obs_layout"] = tuple((str(n), s) for n, s in kwargs.get("obs_layout", ()))
            kwargs["action_names"] = tuple(str(n) for n in kwargs.get("action_names", ()))
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise SpecError(f"malformed policy spec: {exc}") from exc
