"""Every hyperparameter of a FlowRL run, in one frozen dataclass mapped 1:1 to `flowrl train` flags.

Defaults are those of the paper's (arXiv 2506.12811) reference code. Where the paper and the code
differ, they follow the code: ``cfm_weighting='batch'`` (the paper weights each sample) and
``recent_fraction=0.2`` (a replay rule the paper does not describe). They depart from the code in
``tau`` (on purpose, see its docstring) and in how the recent rows are drawn (51 of 256 with
replacement, the code's 52 without); docs/train.md, "Default settings", lists both sides.
The config is written to ``<out>/config.json`` before step 0 and stored inside every checkpoint,
with its :data:`CONFIG_VERSION`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from flowrl_deploy.atomic import write_text_atomic
from flowrl_deploy.checkpoint import RUN_CONFIG_FILE, read_document, resume_point
from flowrl_deploy.envid import parse_env_id
from flowrl_deploy.errors import EnvIdError, FlowRLError
from flowrl_deploy.fieldtypes import is_number, wrong_type
from flowrl_deploy.noise import run_seed_problem
from flowrl_deploy.spec import SOLVERS, flow_steps_problem
from flowrl_deploy.versions import version_problem

CFM_WEIGHTINGS = ("batch", "sample")
DEVICES = ("auto", "cpu", "cuda")
CONFIG_VERSION = 2
"""Stored with every config as ``config_version`` (in config.json and in checkpoint.json's ``config``).
A config without it is version 1, written when ``tau`` was the share of the target critics *kept*
(θ̄ ← tau·θ̄ + (1 − tau)·θ): :meth:`TrainConfig.from_dict` reads its tau as 1 − tau, the same
target updates (:func:`tau_conversion` says so). From version 2 tau is the step toward the online
critics. Bump it when a stored field changes meaning, and convert the older meaning in
:meth:`TrainConfig.from_dict`; a new field needs none (an older release refuses a field it does not know)."""
VERSION_KEY = "config_version"


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
    tau: float = 0.05
    """Step of the target critics toward the online ones at each target update (every `policy_delay`
    updates): θ̄ ← (1 − tau)·θ̄ + tau·θ, as in TD3 and SAC; 1 copies them. A deliberate deviation: the
    reference code uses 0.95 (`soft_update(target, online, 0.95)`, targets 95 % toward the online
    critics), which learned worse here: cartpole-swingup at 40k steps, seeds 0–3, mean 571 with
    ``tau=0.95`` against 745 with 0.05 (docs/train.md). Configs stored before :data:`CONFIG_VERSION` 2
    held the share kept (0.95 for this default) and are converted when read."""
    policy_delay: int = 2
    """Actor and target updates happen once every this many critic updates."""
    lam: float = 0.1
    """λ: scale of the flow-matching weight, λ·exp(A⁺ − mean A⁺), clamped to [1e-3, 1]."""
    expectile: float = 0.9
    """Expectile τ of the value regression V(s) toward min Q̄^β(s, a) at buffer actions."""
    cfm_weighting: str = "batch"
    """'batch': what the released reference code does, one scalar weight per batch (the mean of the
    per-sample weights times the batch-mean flow-matching loss); 'sample': per-sample weights as in the
    paper's Theorem 4.2 (each sample's flow-matching error weighted by its own weight), with the
    reference code's clamp and centring."""

    # --- data ---
    batch_size: int = 256
    """Transitions per gradient update."""
    buffer_size: int = 1_000_000
    """Replay capacity (transitions)."""
    start_steps: int = 5000
    """Warm-up steps of uniformly random actions before the first update."""
    recent_fraction: float = 0.2
    """Share of each batch drawn from the most recent `recent_window` transitions: the reference code's
    rule (`ReplayMemory.sample`), not described in the paper; 0 gives the paper's plain uniform replay."""
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
    """torch.compile the networks (slower start; no faster at the default sizes, see docs/train.md)."""
    cuda_graphs: bool = True
    """On a GPU, replay each update from CUDA graphs (one launch instead of hundreds); not with compile."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def updates_from(self) -> int:
        """Transitions the replay buffer holds before updates run: the warm-up's (at most the buffer's capacity),
        and a batch. A new run reaches it as its warm-up ends; one resumed with an empty buffer refills it this far
        before it learns again, not from a batch's worth of new transitions."""
        return max(self.batch_size, min(self.start_steps, self.buffer_size))

    def validate(self, name: Callable[[str], str] = flag) -> None:
        """Raise :class:`ConfigError` naming the first setting of the wrong type or out of range, as
        ``name`` calls it (by default its ``flowrl train`` flag)."""
        wrong = wrong_type(self)
        if wrong is not None:
            field, expected = wrong
            raise ConfigError(f"{name(field)} must be {expected}, got {getattr(self, field)!r}")
        for field in fields(self):
            if field.type == "float" and not math.isfinite(getattr(self, field.name)):
                raise ConfigError(f"{name(field.name)} must be a finite number, got {getattr(self, field.name)!r}")
        if not self.out.strip():
            raise ConfigError(f"{name('out')} must name a directory for the run, got an empty string")
        problem = run_seed_problem(name("seed"), self.seed) or flow_steps_problem(name("flow_steps"), self.flow_steps)
        if problem is not None:
            raise ConfigError(problem)
        positive = (
            "steps",
            "hidden",
            "batch_size",
            "buffer_size",
            "policy_delay",
            "recent_window",
            "eval_episodes",
            "log_every",
        )
        for field in positive:
            if getattr(self, field) < 1:
                raise ConfigError(f"{name(field)} must be >= 1, got {getattr(self, field)}")
        for field in ("start_steps", "eval_every", "save_every", "threads"):
            if getattr(self, field) < 0:
                raise ConfigError(f"{name(field)} must be >= 0, got {getattr(self, field)}")
        for field in ("gamma", "expectile", "recent_fraction"):
            if not 0.0 <= getattr(self, field) <= 1.0:
                raise ConfigError(f"{name(field)} must lie in [0, 1], got {getattr(self, field)}")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(
                f"{name('tau')} must lie in (0, 1], got {self.tau}: it is the step of the target critics toward "
                "the online ones (1 copies them; at 0 they would never move)"
            )
        if self.batch_size > self.buffer_size:
            raise ConfigError(
                f"{name('batch_size')} ({self.batch_size}) cannot exceed {name('buffer_size')} ({self.buffer_size})"
            )
        for field in ("lr", "lam"):
            if getattr(self, field) <= 0:
                raise ConfigError(f"{name(field)} must be > 0, got {getattr(self, field)}")
        for field, allowed in (("solver", SOLVERS), ("cfm_weighting", CFM_WEIGHTINGS), ("device", DEVICES)):
            if getattr(self, field) not in allowed:
                raise ConfigError(f"{name(field)} must be one of {', '.join(allowed)}, got {getattr(self, field)!r}")

    def to_dict(self) -> dict[str, Any]:
        """The fields, and ``config_version`` (:data:`CONFIG_VERSION`): what config.json and checkpoints store."""
        return {VERSION_KEY: CONFIG_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Any, source: str = "", key: str = "") -> TrainConfig:
        """Rebuild a config from JSON (missing fields take their defaults), refusing unknown fields (a
        typo must not pass silently). Given ``source``, the file the JSON came from, and ``key``, where
        the config lies in it, an error names that file and field (``run/config.json: hidden`` or
        ``…/checkpoint.json: config.hidden``) rather than a flag the user never gave. A stored config
        from before :data:`CONFIG_VERSION` 2 (``config_version`` 1, or none in a file: ``source`` given)
        has its ``tau``, then the share of the target critics kept, read as 1 − tau: the same target
        updates (:func:`tau_conversion`). A caller's own dict without ``source`` or version is read as
        today's: its tau is never flipped behind its back."""
        where, what = (f"{source}: " if source else ""), key or "config"
        if not isinstance(data, dict):
            raise ConfigError(f"{where}{what} must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        tau_stored = VERSION_KEY in data or bool(source)  # its tau's meaning is the stored one, not the caller's
        version = data.pop(VERSION_KEY, 1 if source else CONFIG_VERSION)
        stored = f"{key}.{VERSION_KEY}" if key else VERSION_KEY
        if problem := version_problem(version, stored, CONFIG_VERSION):
            raise ConfigError(f"{where}{problem}")

        def name(field: str) -> str:
            return f"{key}.{field}" if key else field

        if version < 2 and is_number(data.get("tau")):
            kept = data["tau"]
            if not 0.0 <= kept < 1.0:  # said in the file's own terms, not as the value it converts to
                raise ConfigError(
                    f"{where}{name('tau')} must lie in [0, 1) in a config saved before {VERSION_KEY} "
                    f"{CONFIG_VERSION} (the share of the target critics kept), got {kept}"
                )
            data["tau"] = kept_to_step(kept)
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(field) for field in data if field not in known)
        if unknown:
            raise ConfigError(f"{where}unknown {what} fields: {', '.join(unknown)}")

        config = cls()  # the defaults, overwritten with the file's values, then checked as a whole
        for field, value in data.items():
            object.__setattr__(config, field, value)
        try:
            config.validate(name if source else flag)
        except ConfigError as exc:
            raise ConfigError(f"{where}{exc}") from None
        if tau_stored:
            object.__setattr__(config, _STORED_TAU, True)
        return config

    def save(self, run_dir: str | Path) -> Path:
        """Write ``run_dir/config.json`` atomically; a failure is a :class:`FlowRLError` naming it."""
        path = Path(run_dir) / RUN_CONFIG_FILE
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_bytes())  # bytes: UTF-8 with or without a BOM (Notepad), UTF-16
        except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8/16
            raise ConfigError(f"cannot read a training config from {path}: {exc}") from exc
        return cls.from_dict(data, source=str(path))

    def override(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (and validated); a tau read back from a stored config stays one
        unless ``changes`` gives tau (:func:`new_run_tau_note`)."""
        config = replace(self, **changes)
        if "tau" not in changes and getattr(self, _STORED_TAU, False):
            object.__setattr__(config, _STORED_TAU, True)
        return config


_STORED_TAU = "_stored_tau"
"""Set (True) on a config whose tau :meth:`TrainConfig.from_dict` read with its stored meaning (a file's, or a
dict giving ``config_version``); not a field, so never saved or compared."""


def kept_to_step(kept: float) -> float:
    """A version-1 tau (the share of the target critics kept) as today's (the step toward the online
    ones): 1 − kept, rounded to 15 significant digits so that 0.95 reads 0.05 (the float32 weights move
    by the same amounts)."""
    return float(f"{1.0 - float(kept):.15g}")


def tau_conversion(data: Any, source: str) -> str | None:
    """The one warning line for a config ``data`` stored in ``source`` whose tau
    :meth:`TrainConfig.from_dict` converted (``config_version`` 1 or none, a tau stored), else None."""
    if not isinstance(data, dict) or data.get(VERSION_KEY, 1) != 1 or not is_number(data.get("tau")):
        return None
    where = f"{source}: " if source else ""
    return (
        f"{where}config saved before {VERSION_KEY} {CONFIG_VERSION}, when tau was the share of the target critics "
        f"kept: its tau {data['tau']:g} is read as --tau {kept_to_step(data['tau']):g} (the step toward the online "
        "critics), the same target updates"
    )


RESUME_OVERRIDES = (
    "steps",
    "device",
    "threads",
    "cuda_graphs",
    "eval_every",
    "eval_episodes",
    "log_every",
    "save_replay",
)
"""Settings a resumed run may change: the budget, where and how it runs, how often it evaluates
and logs (evaluation has its own env and noise, so none of these changes the training itself), and
whether later checkpoints store the replay buffer. The rest are the run's own; --save-every too,
since the run's periodic checkpoints are kept by it."""


def check_resume_settings(
    settings: dict[str, Any], saved: TrainConfig, *, flags: bool = True, run_dir: Path | None = None
) -> None:
    """Refuse to resume the run whose saved config is ``saved`` with ``settings`` (config field → value)
    that change anything but :data:`RESUME_OVERRIDES`; the :class:`ConfigError` names every changed
    setting by its ``flowrl train`` flag, or with ``flags`` False (a library caller) by its field.
    Repeating a saved value changes nothing and is taken, in any spelling: an env id as parsed
    (``gym:Pendulum-v1`` is ``Pendulum-v1``), and ``out`` as the path it resolves to, compared with
    ``run_dir``, the folder being resumed (so a copied run takes ``out`` of the copy)."""

    def same(name: str, value: Any) -> bool:
        if name == "env":
            return _canonical_env(value) == _canonical_env(saved.env)
        if name == "out" and run_dir is not None:
            return Path(value).resolve() == run_dir.resolve()
        return value == getattr(saved, name)

    changed = [name for name, value in settings.items() if name not in RESUME_OVERRIDES and not same(name, value)]
    if changed:
        name = flag if flags else str
        named, allowed = (", ".join(name(field) for field in names) for names in (changed, RESUME_OVERRIDES))
        given = "may be given with --resume" if flags else "may differ from the run's resume_config()"
        tau = settings.get("tau")
        flipped = "tau" in changed and is_number(tau) and 0 <= tau < 1 and kept_to_step(tau) == saved.tau
        raise ConfigError(
            f"{named} cannot change when resuming: the run keeps its saved settings (only {allowed} {given})"
            + (f"; {meaning_changed(tau)}" if flipped else "")
        )


def large_tau_note(tau: float) -> str | None:
    """For a new run given ``--tau`` over one half (a step today, rare on purpose; a share kept before
    :data:`CONFIG_VERSION` 2, as scripts of then passed it): one line saying what it does now, else None.
    Worded for both of :func:`~flowrl_deploy.train.loop.train`'s callers, ``flowrl train`` and Python."""
    if tau <= 0.5:
        return None
    share = f"{tau * 100:.4g} %"
    kept = kept_to_step(tau)
    return (
        f"tau {tau:g} moves the target critics {share} of the way to the online ones at each update; to keep "
        f"{share} as tau {tau:g} did before {VERSION_KEY} {CONFIG_VERSION}, give tau {kept:g} "
        f"(flowrl train --tau {kept:g}, TrainConfig(tau={kept:g}))"
    )


def new_run_tau_note(cfg: TrainConfig) -> str | None:
    """The rule for a new run's note on its tau, one place for ``flowrl train`` and :func:`train`: the
    :func:`large_tau_note` of a tau the caller gave (``TrainConfig(tau=0.95)``, ``--tau 0.95``, a dict without
    ``config_version``), which a script of before :data:`CONFIG_VERSION` 2 may have meant as the share kept;
    None for a tau read back from a stored config (:meth:`TrainConfig.from_dict` of a file, or of a dict
    giving its version, and that config's overrides but of tau), whose version says what it meant."""
    return None if getattr(cfg, _STORED_TAU, False) else large_tau_note(cfg.tau)


def meaning_changed(tau: float) -> str:
    """What ``--tau tau`` meant before :data:`CONFIG_VERSION` 2, for one given it as a script of then did."""
    return (
        f"--tau is the step toward the online critics since {VERSION_KEY} {CONFIG_VERSION}: this run's --tau {tau:g} "
        f"of before (the share kept) is --tau {kept_to_step(tau):g} now"
    )


def check_unfinished(resume: str | Path, steps: int, *, flags: bool = True) -> None:
    """Refuse to resume the checkpoint (or run) ``resume`` when it has already taken ``steps`` env
    steps: the run is finished, and resuming it would only rewrite its config and metrics. Named as
    :func:`check_resume_settings` names settings."""
    done = steps_taken(resume)
    if done >= steps:
        name = flag("steps") if flags else "steps"
        raise ConfigError(
            f"{resume} already finished at {done} env steps ({name} {steps}); pass a larger {name} to extend it"
        )


def steps_taken(resume: str | Path) -> int:
    """The env steps taken by the checkpoint that resuming ``resume`` continues (none recorded: 0, and
    resuming says what is missing)."""
    return read_document(resume_point(resume)[0]).get("counters", {}).get("env_steps", 0)


def _canonical_env(text: Any) -> Any:
    """An env id as parsed (``gym:Pendulum-v1`` → ``Pendulum-v1``); one that does not parse, as given."""
    if not isinstance(text, str):
        return text
    try:
        return str(parse_env_id(text))
    except EnvIdError:
        return text
