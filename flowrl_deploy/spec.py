"""The policy spec: everything needed to rebuild and run a FlowRL policy, as plain JSON.

It travels inside every checkpoint and (as the policy contract) inside every exported ONNX
file, so that each stage reads the previous stage's artifact, never its in-memory objects.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

from flowrl_deploy.errors import SpecError
from flowrl_deploy.fieldtypes import is_int, wrong_type
from flowrl_deploy.versions import version_problem

if TYPE_CHECKING:
    from flowrl_deploy.contract import PolicyContract

SOLVERS = ("midpoint", "euler")
ACTIVATIONS = ("elu",)
SPEC_VERSION = 1
"""A checkpoint's spec records it as ``spec_version`` (a spec without it is version 1). Bump it when a spec
field changes meaning, so that an older release refuses the spec with "upgrade flowrl-deploy" rather than
misreading it (:meth:`PolicySpec.from_dict`). A new field needs none: an older release refuses a spec with a
field it does not know."""
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
        problem = policy_problem(self)
        if problem is not None:
            raise SpecError(problem)
        if self.activation not in ACTIVATIONS:
            raise SpecError(f"unknown activation {self.activation!r}; supported: {', '.join(ACTIVATIONS)}")
        if not (math.isfinite(self.noise_clip) and self.noise_clip > 0):
            raise SpecError(f"noise_clip must be a finite number > 0, got {self.noise_clip!r}")
        if self.noise_clip > FLOAT32_MAX:
            raise SpecError(
                f"noise_clip must fit float32 (<= {FLOAT32_MAX:.4g}), in which the noise is clamped, "
                f"got {self.noise_clip:g}"
            )
        if self.hidden < 1:
            raise SpecError(f"hidden must be >= 1, got {self.hidden}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["obs_layout"] = [list(item) for item in self.obs_layout]
        return out

    @classmethod
    def from_dict(cls, data: Any) -> PolicySpec:
        """Build a spec from JSON data (a checkpoint's), with a clear error for a missing, unknown or
        impossible field. An unknown field is refused: a checkpoint's spec is our own file, where one
        is a misspelling ("hiden") that would otherwise fall back to its default unseen. A spec a newer
        flowrl-deploy wrote says so by its spec_version, and is refused first with a request to upgrade."""
        version = data.get("spec_version", SPEC_VERSION) if isinstance(data, dict) else SPEC_VERSION
        if problem := version_problem(version, "spec_version", SPEC_VERSION):
            raise SpecError(problem)
        return policy_from_json(cls, data, "policy spec", ignore_unknown=False)


def flow_steps_problem(name: str, steps: int) -> str | None:
    """The one range rule for a number of ODE steps N, wherever a user names it."""
    if not 1 <= steps <= MAX_FLOW_STEPS:
        return f"{name} must lie in [1, {MAX_FLOW_STEPS}], got {steps}"
    return None


def policy_problem(policy: PolicySpec | PolicyContract) -> str | None:
    """The first thing wrong in what a policy spec and its contract both state, or None: each field's
    type, obs_dim and act_dim, the action bounds (one per action, finite, low < high, fitting
    float32), the solver, flow_steps, action_names, obs_layout and control_period_s. The message starts with the
    field's name ("flow_steps must lie in ..."), so that a contract can say "policy contract field …"."""
    wrong = wrong_type(policy)
    if wrong is not None:
        name, expected = wrong
        return f"{name} must be {expected}, got {getattr(policy, name)!r}"
    for name in ("obs_dim", "act_dim"):
        if getattr(policy, name) < 1:
            return f"{name} must be >= 1, got {getattr(policy, name)}"
    for name in ("action_low", "action_high"):
        bounds = getattr(policy, name)
        if len(bounds) != policy.act_dim:
            return f"{name} must hold act_dim = {policy.act_dim} values, got {len(bounds)}"
        if not all(math.isfinite(b) for b in bounds):
            return f"{name} must be finite, got {bounds}"
    for i, (lo, hi) in enumerate(zip(policy.action_low, policy.action_high, strict=True)):
        if not lo < hi:
            return f"action_low must lie below action_high: action {i} has {lo:g} >= {hi:g}"
    problem = float32_bounds_problem(policy.action_low, policy.action_high)
    if problem is not None:
        return problem
    if policy.solver not in SOLVERS:
        return f"solver must be {' or '.join(SOLVERS)}, got {policy.solver!r}"
    problem = flow_steps_problem("flow_steps", policy.flow_steps)
    if problem is not None:
        return problem
    if policy.action_names and len(policy.action_names) != policy.act_dim:
        return f"action_names holds {len(policy.action_names)} names for act_dim = {policy.act_dim}"
    problem = obs_layout_problem(policy.obs_layout, policy.obs_dim)
    if problem is not None:
        return problem
    return control_period_problem(policy.control_period_s)


def control_period_problem(period: float) -> str | None:
    """What is wrong with a control period a spec or contract states, or None: it must be 0 (none) or
    lie in the contract's range (a checkpoint's is refused where it is read, not first at export)."""
    from flowrl_deploy.contract import MAX_CONTROL_PERIOD_S, MIN_CONTROL_PERIOD_S  # contract imports this module

    if period != 0 and not MIN_CONTROL_PERIOD_S <= period <= MAX_CONTROL_PERIOD_S:  # NaN too
        return (
            f"control_period_s is {period:g} s; it must be 0 (none) or lie in "
            f"[{MIN_CONTROL_PERIOD_S:g}, {MAX_CONTROL_PERIOD_S:g}] s (a control rate of "
            f"{1 / MAX_CONTROL_PERIOD_S:g} to {1 / MIN_CONTROL_PERIOD_S:g} Hz)"
        )
    return None


_FROM_JSON: dict[str, Callable[[Any], tuple[Any, ...]]] = {
    "tuple[float, ...]": lambda items: tuple(float(x) for x in items),
    "tuple[str, ...]": lambda items: tuple(str(x) for x in items),
    "tuple[tuple[str, int], ...]": lambda items: tuple((str(name), size) for name, size in items),
}
"""How a JSON list becomes the value of a tuple field, by the field's annotation."""
Policy = TypeVar("Policy", "PolicySpec", "PolicyContract")


def policy_from_json(cls: type[Policy], data: Any, what: str, *, ignore_unknown: bool) -> Policy:
    """Build ``cls`` (PolicySpec or PolicyContract) from a JSON object, its lists made tuples; raise
    :class:`SpecError` starting with ``what`` ("policy spec") if data is no object, lacks a field
    without a default, or cannot be converted; an unknown field is refused unless ``ignore_unknown``.
    The instance then checks its values itself."""
    if data is None:  # a checkpoint.json without "spec"
        raise SpecError(f"{what} is missing (or null)")
    if not isinstance(data, dict):
        raise SpecError(f"{what} must be a JSON object, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    required = [name for name, f in known.items() if f.default is MISSING and f.default_factory is MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise SpecError(f"{what} lacks {', '.join(missing)}")
    unknown = sorted(set(data) - known.keys())
    if unknown and not ignore_unknown:
        raise SpecError(f"{what} has unknown fields {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    try:
        kwargs = {
            name: _FROM_JSON.get(str(known[name].type), lambda read: read)(value)
            for name, value in data.items()
            if name in known
        }
        return cls(**kwargs)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: an integer no float holds (-10**400)
        raise SpecError(f"{what} is malformed: {exc}") from exc
