"""Which run a ``flowrl train`` writes or continues: a new run's directory (:func:`check_new_run_dir`), the
checkpoint and run a resume continues (:func:`run_resume_point`, :func:`run_to_resume`) with its saved config
(:func:`resume_config`, :func:`plan_resume`) and what it says before it trains (:func:`resume_warnings`), the
links of a finished run settled (:func:`settle_run`), and what killed processes left in a run folder, removed
as the run starts (:func:`remove_leftovers`)."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from flowrl_deploy.checkpoint import (
    CHECKPOINTS_DIR,
    DOCUMENT_FILE,
    LAST,
    METRICS_CSV,
    METRICS_JSONL,
    REPLAY_FILE,
    RUN_CONFIG_FILE,
    RUN_OUTPUTS,
    checkpoint_damage,
    free_name,
    read_document,
    resume_point,
    run_checkpoints,
    spec_of,
    step_of,
)
from flowrl_deploy.envid import parse_env_id
from flowrl_deploy.errors import CheckpointError, FlowRLError
from flowrl_deploy.train.config import (
    RESUME_OVERRIDES,
    ConfigError,
    TrainConfig,
    check_resume_settings,
    check_unfinished,
    steps_taken,
)
from flowrl_deploy.train.retention import REPLAY_DROPPED_FILE, SAVE_LEFTOVERS, RunCheckpoints
from flowrl_deploy.train.run_lock import RunLock, in_use, lock_holder


def run_resume_point(resume: str | Path) -> tuple[Path, str | None]:
    """:func:`~flowrl_deploy.checkpoint.resume_point`, except that a run directory with no checkpoint yet whose
    lock another process holds (a run in its warm-up) is refused as in use, naming the holder, rather than as
    holding no checkpoint."""
    try:
        return resume_point(resume)
    except CheckpointError:
        path = Path(resume)
        for run_dir in (path, path.parent) if path.name == CHECKPOINTS_DIR else (path,):
            holder = lock_holder(run_dir)
            if holder is not None:
                raise in_use(run_dir, holder, new_run=False) from None
        raise


def resume_config(checkpoint: str | Path, steps: int | None = None) -> TrainConfig:
    """The saved config of the run a checkpoint belongs to (of a run directory: the one its resume
    continues, :func:`~flowrl_deploy.checkpoint.resume_point`); ``steps`` may extend its budget."""
    directory, _ = run_resume_point(checkpoint)
    document = read_document(directory)  # the JSON only: no tensor is needed here
    spec = spec_of(document, directory)
    if not document.get("config"):
        raise CheckpointError(f"{directory} holds no training config, so it cannot be resumed")
    source = directory / DOCUMENT_FILE
    cfg = TrainConfig.from_dict(document["config"], source=str(source), key="config")
    for field, configured, saved_value in (
        ("hidden", cfg.hidden, spec.hidden),
        ("env", str(parse_env_id(cfg.env)), spec.env_id),
    ):
        if saved_value and configured != saved_value:  # checked here: torch's own error is a page of shapes
            raise CheckpointError(
                f"{source}: config.{field} {configured} does not match the saved policy ({field} {saved_value}); "
                "the weights cannot be resumed under another config"
            )
    if steps is None:
        return cfg
    done = document.get("counters", {}).get("env_steps", 0)
    if steps < done:
        raise FlowRLError(f"--steps {steps} is less than the {done} env steps {directory.name} has taken; "
                          f"give the run's new total, at least {done}")  # fmt: skip
    return cfg.override(steps=steps)


def holds_checkpoints(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run's checkpoints: a new run there is refused, a resume continues it."""
    return any(step_of(entry.name) is not None for entry in (run_dir / CHECKPOINTS_DIR).glob("step_*"))


def check_new_run_dir(run_dir: Path) -> None:
    """A new run goes into a new or empty directory, or one a run that never saved a checkpoint
    left behind (a retry). The run replaces config.json and the metrics files: with them there, a
    valid config.json must say they are a run's; anything else but hidden files (.gitkeep, a
    failed write's temporary file), or a checkpoint, means the folder is not a run directory."""
    if not run_dir.is_dir():
        return
    if holds_checkpoints(run_dir):
        raise FlowRLError(
            f"{run_dir} already holds a run's checkpoints; continue it with --resume {shlex.quote(str(run_dir))} or "
            "choose another --out"
        )
    if (run_dir / DOCUMENT_FILE).exists():
        raise FlowRLError(f"--out {run_dir} is a checkpoint, not a run directory; choose a new or empty folder")
    entries = sorted(entry.name for entry in run_dir.iterdir() if not entry.name.startswith("."))
    foreign = [name for name in entries if name not in RUN_OUTPUTS]
    config = run_dir / RUN_CONFIG_FILE
    replaced = [name for name in entries if name in (RUN_CONFIG_FILE, METRICS_JSONL, METRICS_CSV)]
    if not foreign and replaced:
        try:
            TrainConfig.from_dict(json.loads(config.read_bytes()), source=str(config))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ConfigError):
            foreign = replaced  # metrics without the config of their run, or a config.json of something else
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise FlowRLError(
            f"--out {run_dir} is not empty and is not a flowrl run directory (it holds {shown}), and a run would "
            "replace its config.json and metrics files; choose a new or empty folder"
        )


@dataclass(frozen=True)
class ResumePlan:
    """What :func:`plan_resume` found: the config the resumed run trains with, and for a run that has
    taken its steps already, the steps it took and what settling it changed."""

    cfg: TrainConfig
    finished_at: int | None = None
    """The env steps of a run that has taken ``cfg.steps`` already (it is not trained again), else None."""
    warnings: tuple[str, ...] = ()
    """What to say of a finished run: the links settling it moved. A run that trains says its own warnings
    (:func:`~flowrl_deploy.train.loop.train` logs them, :func:`resume_warnings` among them)."""


def plan_resume(
    resume: str | Path,
    steps: int | None = None,
    given: Mapping[str, object] | None = None,
    *,
    flags: bool = True,
    finished_ok: bool = False,
) -> ResumePlan:
    """Plan the resume of ``resume`` (a checkpoint or run directory): its saved config
    (:func:`resume_config`) with ``steps`` (None: its own) and the :data:`RESUME_OVERRIDES` among
    ``given``, the settings the caller passed (config field → value). Any other setting of ``given``
    that differs from the saved one is refused (:func:`~flowrl_deploy.train.config.check_resume_settings`:
    named by its ``flowrl train`` flag, or with ``flags`` False by its field), and so is a run that has
    taken its steps already, unless ``finished_ok`` (``--resume-if-exists``): that run's links are then
    repaired (:func:`settle_run`) and the plan says where it finished. Nothing is written otherwise;
    ``train(plan.cfg, resume=resume)`` makes the run's checks again under its lock."""
    given = dict(given or {})
    start = run_resume_point(resume)[0]
    cfg = resume_config(resume, steps)
    check_resume_settings(given, cfg, flags=flags, run_dir=run_to_resume(start))  # --out too: the run stays put
    overrides = {name: given[name] for name in RESUME_OVERRIDES if name != "steps" and name in given}
    if overrides:
        cfg = cfg.override(**overrides)
    done = steps_taken(resume)
    if done < cfg.steps:
        return ResumePlan(cfg)
    repaired = settle_run(resume)  # the links of a run killed in its final save: before it is called finished
    if not finished_ok:
        check_unfinished(resume, cfg.steps, flags=flags)
    return ResumePlan(cfg, finished_at=done, warnings=tuple(repaired))


def resume_warnings(checkpoint: Path, cfg: TrainConfig, saved: TrainConfig) -> tuple[str | None, str | None]:
    """What a resume from ``checkpoint`` with ``cfg`` should say before it trains, each None when there is
    nothing to say: that its replay buffer was not saved, or was dropped to save disk (it restarts empty), and
    which fields its saved config lacks that ``cfg`` leaves at the defaults ``saved`` (:func:`resume_config`'s)
    gave them."""
    replay = None
    refill = f"it restarts empty, and updates wait until it holds {cfg.updates_from} transitions"
    if (checkpoint / REPLAY_FILE).is_file():
        pass
    elif (checkpoint / REPLAY_DROPPED_FILE).is_file():  # a save dropped it: a branch from an older checkpoint
        replay = (
            f"the replay buffer of {checkpoint.name} was dropped to save disk (a run keeps it only in {LAST} and the "
            f"checkpoint before it): {refill}"
        )
    else:  # saved without it, or deleted by hand
        replay = f"the replay buffer was not saved (--save-replay): {refill}"
    recorded = read_document(checkpoint).get("config", {})
    defaulted = [  # not out: a resume runs in its own run
        f.name
        for f in fields(TrainConfig)
        if f.name not in recorded and f.name != "out" and getattr(cfg, f.name) == getattr(saved, f.name)
    ]
    fields_note = (
        f"the checkpoint's config has no {', '.join(defaulted)} (saved by an older version or edited by hand); "
        "the resumed run uses the defaults: " + ", ".join(f"{name} {getattr(cfg, name)}" for name in defaulted)
        if defaulted
        else None
    )
    return replay, fields_note


def run_to_resume(checkpoint: Path) -> Path:
    """The run directory that resuming ``checkpoint`` continues: a checkpoint is resumed only inside
    its run, ``<run>/checkpoints/<checkpoint>`` next to ``<run>/config.json``, and only when no later
    save's intact checkpoint (by step, :func:`~flowrl_deploy.checkpoint.step_of`; every one, for a checkpoint not
    named as a save names it) lies beside it (the resumed run would overwrite or prune those)."""
    folder = checkpoint.parent
    run_dir = folder.parent
    if folder.name != CHECKPOINTS_DIR or not (run_dir / RUN_CONFIG_FILE).is_file():
        raise FlowRLError(
            f"--resume {checkpoint}: it does not lie in the checkpoints/ folder of a run directory (one holding "
            f"{RUN_CONFIG_FILE}), so there is no run to continue; resume the run it came from (copy that whole run "
            "directory to branch it)"
        )
    step = step_of(checkpoint.name)  # None: a copy (step_000000200.bak), before every save
    steps = run_checkpoints(folder)
    later = [
        steps[s].name
        for s in sorted(steps)
        if (step is None or s > step) and (steps[s] / DOCUMENT_FILE).is_file() and checkpoint_damage(steps[s]) is None
    ]  # a damaged or incomplete one is set aside by the resume (RunCheckpoints.set_aside_after)
    if later:
        raise FlowRLError(
            f"{folder} holds checkpoints after {checkpoint.name} ({', '.join(later)}), which resuming from it "
            f"would overwrite; continue the run with --resume {shlex.quote(str(run_dir))} (from {later[-1]}), or "
            f"branch it from {checkpoint.name}: copy the run directory, delete the copy's checkpoints listed here, "
            f"and resume the copy's {CHECKPOINTS_DIR}/{checkpoint.name}"
        )
    return run_dir


_LINK_LEFTOVERS = re.compile(r"\.(last|best)\.(link-\d+|tmp-[a-z0-9_]+|copy-\d+)|\.symlink-probe-\d+")
"""A link being swapped (``_symlink_swap``), a pointer file's atomic write, the symlink probe, and a copied run's
``last`` or ``best`` folder set aside as a copy of a step folder (:meth:`RunCheckpoints.relink_copies`)."""
_RUN_LEFTOVERS = re.compile(r"\.(config\.json|metrics\.jsonl|metrics\.csv)\.tmp-[a-z0-9_]+")
"""The atomic writes (``write_atomic``) of the run folder's files."""


def remove_leftovers(run_dir: Path) -> None:
    """Remove what killed processes left in a run folder, by the names this project's writers give them: a save's
    partial checkpoint (``checkpoints/.step_*.tmp-*``, as large as a checkpoint and its replay buffer), the
    temporary files of an atomic write or link swap, and a checkpoint kept aside by a replacement where that
    replacement is in place (where not, it may be the step's only copy: it stays). Only under the run's lock, as
    the run starts (before it writes anything: on a tight quota, the partial checkpoint made the next save
    fail), never where the folder went unlocked, since another run may be writing them. Anything else, hidden or
    not, is left alone; a failure to remove one is no error."""
    folder = run_dir / CHECKPOINTS_DIR
    for directory, pattern in ((folder, SAVE_LEFTOVERS), (folder, _LINK_LEFTOVERS), (run_dir, _RUN_LEFTOVERS)):
        try:
            entries = list(directory.iterdir()) if directory.is_dir() else []
        except OSError:
            continue
        for entry in entries:
            found = pattern.fullmatch(entry.name)
            if found is None:
                continue
            if pattern is SAVE_LEFTOVERS:
                if step_of(found[1]) is None or entry.is_symlink() or not entry.is_dir():
                    continue
                if found[2].startswith("old-") and not (folder / found[1]).is_dir():
                    continue  # the replacement never came: this is the step's checkpoint
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.is_symlink() or entry.is_file():
                with contextlib.suppress(OSError):
                    entry.unlink()
            elif found[2] is not None and found[2].startswith("copy-") and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)  # checked byte for byte before it was set aside


def set_aside_advice(checkpoint: Path) -> str:
    """What to do about a checkpoint of a run that fails to load although its files are whole (its numbers or
    fields are wrong): set it aside and resume the run again, from the newest intact checkpoint before it, or
    where none is, restore it from a copy."""
    folder, step = checkpoint.parent, step_of(checkpoint.name)
    older = {
        s: c
        for s, c in (run_checkpoints(folder).items() if folder.name == CHECKPOINTS_DIR and step is not None else ())
        if s < step and (c / DOCUMENT_FILE).is_file() and checkpoint_damage(c) is None
    }
    if not older:
        return (
            "restore it from a copy of the run, or start the run again in a new folder "
            "(flowrl train … --out NEW_FOLDER)"
        )
    aside = shlex.quote(str(free_name(checkpoint, ".damaged")))
    return (
        f"if it is damaged, set it aside and resume the run from {older[max(older)].name}: "
        f"mv {shlex.quote(str(checkpoint))} {aside} && flowrl train --resume {shlex.quote(str(folder.parent))}"
    )


def settle_run(resume: str | Path) -> list[str]:
    """Repair the links of the run that resuming ``resume`` continues (:meth:`RunCheckpoints.repair`), under its
    lock, and return what moved, as warnings: before a finished run is answered as such (``flowrl train
    --resume-if-exists`` exits 0 then), so that ``last`` and ``best`` of a run killed in its final save's window
    do not stay on the older checkpoint that ``flowrl eval``, export and serve would take."""
    start, behind = run_resume_point(resume)
    run_dir = run_to_resume(start)
    lock = RunLock(run_dir, new_run=False)
    try:
        if not lock.unlocked:
            remove_leftovers(run_dir)
        return RunCheckpoints(run_dir, save_every=0).repair(start, behind)
    finally:
        lock.release()
