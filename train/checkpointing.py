"""What a run's checkpoint holds beyond the policy, in the one checkpoint format (``flowrl_deploy.checkpoint``):
the training state a resume restores (:func:`save_training_checkpoint`, :func:`restore_training`) and the
evaluation record (:class:`EvalRecord`) that a resume restores and ``best`` is ranked by. What else it
held up to v0.1.0 still imports from it, with a DeprecationWarning naming its module now (:data:`MOVED`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flowrl_deploy.checkpoint import DOCUMENT_FILE, load_checkpoint, save_checkpoint
from flowrl_deploy.errors import CheckpointError
from flowrl_deploy.fieldtypes import is_int
from flowrl_deploy.moved import moved_names
from flowrl_deploy.spec import PolicySpec
from flowrl_deploy.train.config import TrainConfig

if TYPE_CHECKING:
    from flowrl_deploy.train.actor import actor_act_fn as actor_act_fn
    from flowrl_deploy.train.actor import load_actor as load_actor
    from flowrl_deploy.train.algorithm import FlowRL
    from flowrl_deploy.train.replay import ReplayBuffer
    from flowrl_deploy.train.resume import ResumePlan as ResumePlan
    from flowrl_deploy.train.resume import check_new_run_dir as check_new_run_dir
    from flowrl_deploy.train.resume import holds_checkpoints as holds_checkpoints
    from flowrl_deploy.train.resume import plan_resume as plan_resume
    from flowrl_deploy.train.resume import remove_leftovers as remove_leftovers
    from flowrl_deploy.train.resume import resume_config as resume_config
    from flowrl_deploy.train.resume import resume_warnings as resume_warnings
    from flowrl_deploy.train.resume import run_resume_point as run_resume_point
    from flowrl_deploy.train.resume import run_to_resume as run_to_resume
    from flowrl_deploy.train.resume import set_aside_advice as set_aside_advice
    from flowrl_deploy.train.resume import settle_run as settle_run
    from flowrl_deploy.train.retention import RunCheckpoints as RunCheckpoints
    from flowrl_deploy.train.run_lock import RunLock as RunLock
    from flowrl_deploy.train.run_lock import in_use as in_use
    from flowrl_deploy.train.run_lock import lock_holder as lock_holder

MOVED = {
    **dict.fromkeys(("RunLock", "in_use", "lock_holder"), "flowrl_deploy.train.run_lock"),
    "RunCheckpoints": "flowrl_deploy.train.retention",
    **dict.fromkeys(
        (
            "run_resume_point",
            "resume_config",
            "holds_checkpoints",
            "check_new_run_dir",
            "ResumePlan",
            "plan_resume",
            "resume_warnings",
            "run_to_resume",
            "remove_leftovers",
            "set_aside_advice",
            "settle_run",
        ),
        "flowrl_deploy.train.resume",
    ),
    **dict.fromkeys(("load_actor", "actor_act_fn"), "flowrl_deploy.train.actor"),
}
"""The public names this module held until it was split by job (ced83f0), and the module each is in now
(v0.1.0's ``missing_config_fields`` is gone: a resume itself warns of the config fields it fills in)."""

if not TYPE_CHECKING:  # type checkers read the moved names from imports; a module __getattr__ would pass any typo
    __getattr__ = moved_names(__name__, MOVED)


def finite_or_none(x: float) -> float | None:
    """``x``, or None where it is not finite (JSON has no infinity: a run's best return before any evaluation)."""
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class EvalRecord:
    """A checkpoint's ``eval`` record (``checkpoint.json``): the run's best evaluation return so far, and the
    return and env step of its latest evaluation (None: no evaluation yet). The one place that writes it
    (:meth:`to_dict`) and reads it (:meth:`from_document`), for a resume and for ranking ``best``."""

    best_return: float | None = None
    last_return: float | None = None
    last_step: int | None = None
    """The env step of ``last_return``'s evaluation: a checkpoint saved between evaluations records the
    previous one's, so its own policy's return is ``last_return`` only where this is its own step."""
    step_recorded: bool = True
    """False for a record saved before ``last_step`` was recorded (the key is absent)."""
    last_unstable: bool = False
    """An unstable simulation cut an episode of the latest evaluation short (the key, written only when true):
    its return, which counts that episode's steps before, ranks no checkpoint ``best``."""

    def to_dict(self) -> dict[str, float | int | None]:
        record = {"best_return": self.best_return, "last_return": self.last_return, "last_step": self.last_step}
        return record | ({"last_unstable": True} if self.last_unstable else {})

    @classmethod
    def from_document(
        cls, document: dict, *, strict: bool = False, source: str | Path = DOCUMENT_FILE
    ) -> EvalRecord | None:
        """The record of a checkpoint's ``document`` (none there: an empty record). One that is not a JSON
        object of finite numbers or null with a step of at least 0 is None, or with ``strict`` (a resume, which
        restores it) a :class:`CheckpointError` naming ``source``, the document's path."""
        evaluation = document.get("eval", {})
        if isinstance(evaluation, dict):
            best, last, step = (evaluation.get(key) for key in ("best_return", "last_return", "last_step"))
            unstable = evaluation.get("last_unstable", False)
            if (
                all(x is None or (type(x) in (int, float) and math.isfinite(x)) for x in (best, last))
                and (step is None or (is_int(step) and step >= 0))
                and type(unstable) is bool
            ):
                return cls(best, last, step, step_recorded="last_step" in evaluation, last_unstable=unstable)
        if not strict:
            return None
        raise CheckpointError(
            f"{source}: eval must be a JSON object of finite numbers or null "
            f"(best_return, last_return; last_step: a step; last_unstable: true or false), got {evaluation!r:.200}"
        )

    def own_return(self, env_steps: object, *, named_best: bool = False) -> float | None:
        """The evaluation return of the policy of the checkpoint at ``env_steps`` that holds this record, or
        None: ``last_return`` where ``last_step`` is ``env_steps``. A record saved before ``last_step`` was
        counts only for the checkpoint ``best`` names (``named_best``), which was saved at its evaluation."""
        if self.last_return is None or self.last_unstable:
            return None
        if not self.step_recorded:
            return float(self.last_return) if named_best else None
        return float(self.last_return) if self.last_step is not None and self.last_step == env_steps else None


def save_training_checkpoint(
    path: Path,
    spec: PolicySpec,
    cfg: TrainConfig,
    agent: FlowRL,
    replay: ReplayBuffer,
    action_rng: np.random.Generator,
    *,
    env_steps: int,
    episodes: int,
    evaluation: EvalRecord,
    runtime: dict[str, object],
) -> Path:
    """Write a run's checkpoint at ``path``: the actor (``model.safetensors``) with the spec, config, counters,
    ``evaluation`` and ``runtime`` records (``checkpoint.json``), and the state a resume restores
    (:func:`restore_training`): the critics and optimizers, the RNGs of the warm-up actions and the replay
    sampling, and with ``cfg.save_replay`` the replay buffer."""
    replay_arrays, replay_state = replay.state_dict()
    return save_checkpoint(
        path,
        spec=spec,
        actor={k: v.detach().cpu().numpy() for k, v in agent.actor.state_dict().items()},
        config=cfg.to_dict(),
        counters={"env_steps": env_steps, "episodes": episodes, "updates": agent.updates},
        extra={"eval": evaluation.to_dict(), "runtime": runtime},
        training_tensors=agent.state_tensors(),
        training_json={
            "agent": agent.state_json(),
            "action_rng": action_rng.bit_generator.state,
            "replay_rng": replay.rng_state(),
            "replay": replay_state if cfg.save_replay else None,
        },
        replay=replay_arrays if cfg.save_replay and replay.size else None,
    )


def restore_training(
    path: str | Path, agent: FlowRL, replay: ReplayBuffer, action_rng: np.random.Generator
) -> tuple[int, int, EvalRecord]:
    """Restore into ``agent``, ``replay`` and ``action_rng`` what :func:`save_training_checkpoint` wrote at
    ``path``, and return its env steps, episodes and evaluation record. A checkpoint whose training state is
    incomplete or malformed is a :class:`CheckpointError` naming it."""
    checkpoint = load_checkpoint(path, training_state=True)
    evaluation = EvalRecord.from_document(checkpoint.document, strict=True, source=checkpoint.path / DOCUMENT_FILE)
    state = checkpoint.training_json
    try:
        agent.load_state(checkpoint.actor, checkpoint.training_tensors, state["agent"])
        action_rng.bit_generator.state = state["action_rng"]
        replay.set_rng_state(state["replay_rng"])
        if checkpoint.replay and state.get("replay"):
            replay.load_state_dict(checkpoint.replay, state["replay"])
        return checkpoint.counters["env_steps"], checkpoint.counters["episodes"], evaluation
    except CheckpointError as exc:  # e.g. actor weights that do not fit the spec: say which checkpoint
        raise CheckpointError(f"{checkpoint.path}: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{checkpoint.path}: training state is incomplete or malformed ({exc})") from exc


def own_eval_return(document: dict | None, *, named_best: bool = False) -> float | None:
    """The evaluation return of a checkpoint's own policy, from its document (:meth:`EvalRecord.own_return`),
    or None (no such document, or no valid record)."""
    if not isinstance(document, dict) or not isinstance(document.get("counters"), dict):
        return None
    record = EvalRecord.from_document(document)
    return None if record is None else record.own_return(document["counters"].get("env_steps"), named_best=named_best)
