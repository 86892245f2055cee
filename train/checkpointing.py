"""Training's side of the one checkpoint format (``flowrl_deploy.checkpoint``): which run directory
a new run may write and which run a resume continues (with its saved config, :func:`plan_resume`),
what a run's checkpoint holds (:func:`save_training_checkpoint`, :func:`restore_training`, its
:class:`EvalRecord`), which checkpoints a run keeps, and rebuilding a flow actor from one."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shlex
import shutil
import socket
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from flowrl_deploy.atomic import os_reason
from flowrl_deploy.checkpoint import (
    BEST,
    CHECKPOINTS_DIR,
    DOCUMENT_FILE,
    LAST,
    METRICS_CSV,
    METRICS_JSONL,
    REPLAY_FILE,
    RUN_CONFIG_FILE,
    RUN_OUTPUTS,
    checkpoint_damage,
    copied_checkpoint,
    copied_link_refusal,
    free_name,
    link_checkpoint,
    load_checkpoint,
    read_checkpoint_link,
    read_document,
    resume_point,
    run_checkpoints,
    save_checkpoint,
    spec_of,
    step_name,
    step_of,
)
from flowrl_deploy.envid import parse_env_id
from flowrl_deploy.errors import CheckpointError, FlowRLError, printable
from flowrl_deploy.fieldtypes import is_int, is_integer, shown
from flowrl_deploy.noise import draw_noise, session_noise
from flowrl_deploy.runtime import one_observation
from flowrl_deploy.spec import PolicySpec, flow_steps_problem
from flowrl_deploy.train.actor import FlowActor
from flowrl_deploy.train.config import (
    RESUME_OVERRIDES,
    ConfigError,
    TrainConfig,
    check_resume_settings,
    check_unfinished,
    steps_taken,
)

if TYPE_CHECKING:
    from flowrl_deploy.train.algorithm import FlowRL
    from flowrl_deploy.train.replay import ReplayBuffer

try:
    import fcntl
except ImportError:  # Windows: no flock; msvcrt's byte-range lock instead
    fcntl = None  # type: ignore[assignment]
try:
    import msvcrt
except ImportError:  # anything but Windows
    msvcrt = None  # type: ignore[assignment]


class RunCheckpoints:
    """The ``checkpoints/`` directory of a run.

    Every save writes ``step_XXXXXXXXX`` and points ``last`` at it, and ``best`` at the checkpoint whose own
    evaluation returned the most (:meth:`best_checkpoint`): the new one when it holds the best evaluation so
    far, and otherwise whichever it was, so that a save repairs a ``best`` left behind by a crash. Periodic
    checkpoints (multiples of ``save_every``) are kept; any other step directory is removed once neither link
    names it (and never the one ``best`` should name), and so is what a save cut short by a crash left behind
    (``.step_*.tmp-*``). Entries not named as saves name them (:func:`~flowrl_deploy.checkpoint.step_of`:
    ``step_000000200.bak``) are left alone. The directory is made at once, so that a file in its way fails
    before training, not at the first save.
    """

    def __init__(self, run_dir: str | Path, save_every: int) -> None:
        self.dir = Path(run_dir) / CHECKPOINTS_DIR
        self.save_every = save_every
        self._written: int | None = None
        self.written: Path | None = None
        """The newest checkpoint this run wrote: complete, whether or not its links moved after it."""
        self.repaired: str | None = None
        """What the last :meth:`repair_best` moved, as a warning, or None."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"cannot create the checkpoints folder {self.dir}: {exc.strerror or exc}") from exc

    def save(self, step: int, write: Callable[[Path], object], *, best: bool = False) -> Path:
        """Write the checkpoint of ``step`` with ``write(path)`` (once, if asked twice at one step)
        and move the links (``best`` to it when ``best``, else to :meth:`best_checkpoint`)."""
        path = self.dir / step_name(step)
        if self._written != step:
            write(path)
            self._written = step
        self.written = path
        # best first: killed before moving last, the run resumes from this newest one (resume_point)
        target = path if best else self.repair_best(quiet=True)
        if best:
            link_checkpoint(self.dir, BEST, path)
        link_checkpoint(self.dir, LAST, path)
        self._prune(target)
        return path

    def best_checkpoint(self) -> tuple[Path, float] | None:
        """The checkpoint ``best`` should name, and its evaluation return: of this folder's checkpoints, the one
        whose own evaluation (:func:`own_eval_return`) returned the most, the later one of a tie (as a new best
        replaces an equal one); None where none records one (no evaluation yet, or only checkpoints saved before
        the step of their evaluation was recorded, but the one ``best`` names)."""
        named = self._named(BEST)
        found: tuple[float, int, Path] | None = None
        for entry in self.dir.glob("step_*"):
            step = step_of(entry.name)
            if step is None or entry.is_symlink() or not entry.is_dir():  # a save's folder is a folder here
                continue
            value = own_eval_return(_document_or_none(entry), named_best=entry.name == named)
            if value is not None and (found is None or (value, step) > found[:2]):
                found = (value, step, entry)
        return None if found is None else (found[2], found[0])

    def repair_best(self, quiet: bool = False) -> Path | None:
        """Point ``best`` at :meth:`best_checkpoint` where it names another one (or none): a run killed after
        a new best's checkpoint was in place but before ``best`` moved. Returns that checkpoint (None: none
        records its evaluation); unless ``quiet``, :attr:`repaired` says what moved, as a warning."""
        found = self.best_checkpoint()
        self.repaired = None
        if found is None:
            return None
        target, value = found
        named = self._named(BEST)
        if named is not None and os.path.realpath(self.dir / named) == os.path.realpath(target):
            return target
        link_checkpoint(self.dir, BEST, target)
        if quiet:
            return target
        if named is not None and not (self.dir / named).exists():  # set aside as damaged, or deleted
            self.repaired = (
                f"{self.dir / BEST} named {printable(named)}, which is gone; it now names {target.name}, the "
                f"checkpoint whose evaluation returned the most ({value:g})"
            )
        else:
            was = "is missing" if named is None else f"pointed at {printable(named)}"
            self.repaired = (
                f"{self.dir / BEST} {was}, not at {target.name}, the checkpoint whose evaluation returned the most "
                f"({value:g}; the run was killed between saving it and moving {BEST}?); {BEST} now names it"
            )
        return target

    def repair(self, start: Path, behind: str | None = None) -> list[str]:
        """Make the folder what a resume from ``start`` needs: the damaged or incomplete checkpoints after it
        set aside (:meth:`set_aside_after`), then ``best`` (:meth:`repair_best`) and ``last`` pointed where they
        belong (a run killed between saving a checkpoint and moving its links). Returns what changed, as
        warnings (``behind``: :func:`~flowrl_deploy.checkpoint.resume_point`'s, for a moved ``last``). First,
        ``last`` and ``best`` of a run copied with links followed become links again (:meth:`relink_copies`)."""
        relinked = self.relink_copies()
        set_aside = self.set_aside_after(start)
        warnings = relinked + set_aside
        self.repair_best()
        warnings += [self.repaired] if self.repaired else []
        linked = self._named(LAST)
        if linked is None or os.path.realpath(self.dir / linked) != os.path.realpath(start):
            link_checkpoint(self.dir, LAST, start)
            warnings += [behind] if behind and not set_aside else []  # a set-aside line says it already
        return warnings

    def relink_copies(self) -> list[str]:
        """Make ``last`` and ``best`` links again where they are folders, each a copy of a step folder beside it
        (:func:`~flowrl_deploy.checkpoint.copied_checkpoint`, byte for byte): a run copied with links followed
        (``cp -rL``, ``scp -r``, a cloud sync), whose links no swap could replace. The copy is renamed aside, the
        link made as a save makes it, and the copy deleted; a kill in between leaves the link missing, which a
        resume repairs, and the copy aside (:func:`remove_leftovers` removes it). A folder that copies no step
        folder is never deleted: refused, saying what to do. Returns one line saying what it made, or none."""
        copies: dict[str, Path] = {}  # each checked before any moves: a refusal changes nothing
        for name in (LAST, BEST):
            entry = self.dir / name
            if entry.is_symlink() or not entry.is_dir():
                continue
            target = copied_checkpoint(entry, thorough=True)
            if target is None:
                raise CheckpointError(copied_link_refusal(entry))
            copies[name] = target
        for name, target in copies.items():
            entry = self.dir / name
            aside = self.dir / f".{name}.copy-{os.getpid()}"
            try:
                if aside.is_dir() and not aside.is_symlink():  # this pid's, from a kill: a copy as well
                    shutil.rmtree(aside)
                os.replace(entry, aside)
            except OSError as exc:
                raise CheckpointError(
                    f"cannot move {entry}, a copy of {target.name}, aside: {os_reason(exc)}"
                ) from None
            link_checkpoint(self.dir, name, target)
            shutil.rmtree(aside, ignore_errors=True)
        if not copies:
            return []
        why = "the run was copied with links followed: cp -L, scp -r, a cloud sync?"
        if len(copies) == 1:
            ((name, target),) = copies.items()
            return [f"{self.dir / name} was a folder, a copy of {target.name} ({why}); it is a link to it again"]
        return [
            f"{self.dir / LAST} and {BEST} were folders, copies of {copies[LAST].name} and {copies[BEST].name} "
            f"({why}); they are links to them again"
        ]

    def set_aside_after(self, start: Path) -> list[str]:
        """Rename each checkpoint folder after ``start`` that is damaged
        (:func:`~flowrl_deploy.checkpoint.checkpoint_damage`) or incomplete (no ``checkpoint.json``) to
        ``step_….damaged`` (``.damaged-2``, … where taken), which no save, prune or resume touches: the resumed
        run would otherwise overwrite or prune it, and it may still hold what a person can save. Returns one
        line for each (what is wrong, the name it keeps, the steps to redo)."""
        after = step_of(start.name)  # None: a copy (step_000000200.bak) lies before every save
        lines = []
        for step, entry in sorted(run_checkpoints(self.dir).items()):
            if (after is not None and step <= after) or entry.is_symlink() or not entry.is_dir():
                continue
            if (entry / DOCUMENT_FILE).is_file():
                damage = checkpoint_damage(entry)
            else:
                damage = f"it has no {DOCUMENT_FILE} (files deleted, or a copy cut short?)"
            if damage is None:
                continue  # intact: run_to_resume refuses to resume before it
            aside = free_name(entry, ".damaged")
            try:
                os.replace(entry, aside)
            except OSError as exc:
                raise CheckpointError(
                    f"{entry} is damaged ({damage}) and cannot be set aside: {os_reason(exc)}"
                ) from None
            lines.append(
                f"{entry} is damaged: {damage}; it is kept as {aside.name}, and the run resumes from {start.name}"
                + (f" ({step - after} env steps to redo)" if after is not None else "")
            )
        return lines

    def _named(self, link: str) -> str | None:
        with contextlib.suppress(CheckpointError):  # a foreign file: names none here
            return read_checkpoint_link(self.dir / link)
        return None

    def _is_periodic(self, step: int) -> bool:
        return self.save_every > 0 and step % self.save_every == 0

    def _prune(self, best: Path | None = None) -> None:
        linked = set() if best is None else {os.path.realpath(best)}
        for link in (LAST, BEST):
            name = self._named(link)
            if name is not None and (self.dir / name).exists():
                linked.add(os.path.realpath(self.dir / name))
        for path in self.dir.glob("step_*"):  # realpath: a symlink loop is no RuntimeError here
            step = step_of(path.name)
            if step is not None and os.path.realpath(path) not in linked and not self._is_periodic(step):
                shutil.rmtree(path, ignore_errors=True)
        for partial in self.dir.glob(".step_*.tmp-*"):  # a save cut short (remove_leftovers' names)
            found = _SAVE_LEFTOVERS.fullmatch(partial.name)
            if found and found[2].startswith("tmp-") and step_of(found[1]) is not None and not partial.is_symlink():
                shutil.rmtree(partial, ignore_errors=True)


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

    def to_dict(self) -> dict[str, float | int | None]:
        return {"best_return": self.best_return, "last_return": self.last_return, "last_step": self.last_step}

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
            if all(x is None or (type(x) in (int, float) and math.isfinite(x)) for x in (best, last)) and (
                step is None or (is_int(step) and step >= 0)
            ):
                return cls(best, last, step, step_recorded="last_step" in evaluation)
        if not strict:
            return None
        raise CheckpointError(
            f"{source}: eval must be a JSON object of finite numbers or null "
            f"(best_return, last_return; last_step: a step), got {evaluation!r:.200}"
        )

    def own_return(self, env_steps: object, *, named_best: bool = False) -> float | None:
        """The evaluation return of the policy of the checkpoint at ``env_steps`` that holds this record, or
        None: ``last_return`` where ``last_step`` is ``env_steps``. A record saved before ``last_step`` was
        counts only for the checkpoint ``best`` names (``named_best``), which was saved at its evaluation."""
        if self.last_return is None:
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


def _document_or_none(checkpoint: Path) -> dict | None:
    """A checkpoint folder's document as JSON, or None where it cannot be read (incomplete, damaged)."""
    try:
        document = json.loads((checkpoint / DOCUMENT_FILE).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


class RunLock:
    """An exclusive lock on a run directory for as long as one run writes it, so that a second
    ``flowrl train`` on the same ``--out`` (a double submit, a requeue while the first job still runs),
    or a second resume of the run, is refused instead of mixing its files into the first's.

    It is ``fcntl.flock`` on ``<run>/.lock`` (hidden: a retry still finds the folder empty; on Windows
    ``msvcrt.locking`` of one byte of it), which the kernel drops when the process ends, however it
    ends: a SIGKILL leaves no stale lock (a node that dies holding it on a network file system may).
    The file names its holder (pid, host, start time) for the refusal. Making the lock makes the
    directory; :meth:`release` with ``undo`` (a refused run) removes the folders it made, if still
    empty. Where the file system has no flock (an NFS mounted without locks, a Lustre without
    ``-o flock``) or the system has no lock at all, the run goes unlocked and :attr:`unlocked` says why."""

    FILE = ".lock"

    def __init__(self, run_dir: Path, *, new_run: bool) -> None:
        self.run_dir, self.path = run_dir, run_dir / self.FILE
        made = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FlowRLError(f"cannot create the run directory {run_dir}: {exc.strerror or exc}") from None
        self._made = made  # innermost first
        self._fd: int | None = None
        self.unlocked: str | None = None
        """Why the directory could not be locked ('No locks available: the file system has no locks'), or None."""
        try:
            self._fd = self._acquire(new_run)
        except BaseException:
            self._remove_made()
            raise

    MSVCRT_OFFSET = 1 << 20
    """Where msvcrt's lock lies (Windows): a byte past the holder's JSON, which a locked byte would
    make unreadable to the refused run."""
    TRIES = 100
    """Opens of a lock file replaced between its open and its lock, before the run gives up: a release
    by the holder before us replaces it once; a file replaced at every try (a link planted before each
    open and removed after it, where the system has no O_NOFOLLOW) spun the run at full CPU forever."""

    def _acquire(self, new_run: bool) -> int | None:
        if fcntl is None and msvcrt is None:
            self.unlocked = "this system has neither flock nor msvcrt locking"
            return None
        for _ in range(self.TRIES):
            fd = self._open()
            try:
                self._lock(fd)
            except OSError as exc:
                # held: flock says EWOULDBLOCK (or EACCES), msvcrt EACCES or EDEADLOCK; anything else means
                if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EDEADLK):  # no locks (an NFS without)
                    self.unlocked = f"{os_reason(exc)}: the file system has no locks"
                    os.close(fd)
                    with contextlib.suppress(OSError):
                        self.path.unlink()
                    return None
                holder = _holder(fd)
                os.close(fd)
                raise in_use(self.run_dir, holder, new_run=new_run) from None
            try:  # the holder before us may have removed the file as we opened it: lock the one in place
                if os.fstat(fd).st_ino == os.lstat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        else:
            raise FlowRLError(
                f"cannot lock the run directory {self.run_dir}: {self.path} was replaced between its open and its "
                f"lock at each of {self.TRIES} tries; stop what replaces it, or remove it"
            )
        if hasattr(os, "fchmod"):  # a stale lock an older flowrl-deploy made 0644 (or another user's: EPERM)
            with contextlib.suppress(OSError):
                os.fchmod(fd, 0o600)
        since = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        with contextlib.suppress(OSError):  # only for the refusal's message: a full disk fails the run later, by name
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode())
        return fd

    def _open(self) -> int:
        """Open (or make) the lock file, owner-only (0600: any user who can open a stale lock can flock it,
        refusing the owner's runs for as long as they hold it). A symbolic link there is never followed
        (``O_NOFOLLOW``; where the system has none, Windows, it is looked for first), nor is anything but a
        regular file used (``O_NONBLOCK``: a pipe does not block the open): whoever can write the run folder
        could otherwise make the run truncate and rewrite any file its user can write."""
        nofollow = getattr(os, "O_NOFOLLOW", 0)
        if not nofollow and self.path.is_symlink():
            raise self._not_the_lock("is a symbolic link")
        flags = os.O_RDWR | os.O_CREAT | nofollow | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            if self.path.is_symlink():  # ELOOP (EMLINK on FreeBSD)
                raise self._not_the_lock("is a symbolic link") from None
            if self.path.exists() and not self.path.is_file():  # EISDIR; ENXIO for a socket
                raise self._not_the_lock("is not a regular file (a folder, pipe, socket or device)") from None
            raise FlowRLError(f"cannot lock the run directory {self.run_dir}: {os_reason(exc)}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise self._not_the_lock("is not a regular file (a folder, pipe, socket or device)")
        return fd

    def _not_the_lock(self, what: str) -> FlowRLError:
        return FlowRLError(f"{self.path} {what}, not the run's lock file; remove it")

    def _lock(self, fd: int) -> None:
        """Lock ``fd`` without waiting: ``flock``, or on Windows ``msvcrt.locking`` of one byte at
        :attr:`MSVCRT_OFFSET` (Windows drops it when the process ends, as the kernel drops a flock)."""
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        os.lseek(fd, self.MSVCRT_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def release(self, *, undo: bool = False) -> None:
        """Unlock (removing the file first, while still held; on Windows, where an open file cannot be
        removed, just after); with ``undo``, also remove the folders the lock made, where still empty."""
        if self._fd is not None:
            if fcntl is not None:
                with contextlib.suppress(OSError):
                    self.path.unlink()
                os.close(self._fd)
            else:
                os.close(self._fd)
                with contextlib.suppress(OSError):  # another run may have it open (and locked) by now
                    self.path.unlink()
            self._fd = None
        if undo:
            self._remove_made()

    def _remove_made(self) -> None:
        for folder in self._made:
            try:
                folder.rmdir()
            except OSError:
                return


def in_use(run_dir: Path, holder: str, *, new_run: bool) -> FlowRLError:
    """The refusal of a run, or a resume, of ``run_dir`` while another process holds its lock (``holder``:
    :func:`_holder`'s)."""
    what = f"--out {run_dir}" if new_run else f"the run {run_dir}"
    instead = " or choose another --out" if new_run else ""
    return FlowRLError(f"{what} is in use by another flowrl train{holder}; wait for it to end{instead}")


def lock_holder(run_dir: Path) -> str | None:
    """Whether another process holds ``run_dir``'s lock, without taking it: its holder as :func:`_holder` says it
    ('' where the file does not say), or None where none holds it or this cannot tell (no flock, no lock file).
    A shared lock is tried and dropped at once: a run starting in that instant would be refused as a second one."""
    path = run_dir / RunLock.FILE
    if fcntl is None or path.is_symlink() or not path.is_file():
        return None
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            return _holder(fd) if exc.errno in (errno.EWOULDBLOCK, errno.EACCES) else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


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


def _holder(fd: int) -> str:
    """' (pid 21074 on host node7 since …)' from a lock file, or '' when it does not say: a pid that is no
    positive integer, a host or time that is no string. Whoever can write the file chose them, so the
    strings are cut at 100 characters and their unprintable characters escaped (``printable``)."""
    try:
        if hasattr(os, "pread"):
            head = os.pread(fd, 4096, 0)
        else:  # Windows
            os.lseek(fd, 0, os.SEEK_SET)
            head = os.read(fd, 4096)
        holder = json.loads(head)
    except (OSError, ValueError, RecursionError):  # ValueError: not JSON, not UTF-8
        return ""
    if not isinstance(holder, dict):
        return ""
    pid, host, since = holder.get("pid"), holder.get("host"), holder.get("since")
    if not (is_int(pid) and 0 < pid < 2**32 and isinstance(host, str) and isinstance(since, str)):
        return ""
    return f" (pid {pid} on host {printable(host, 100)} since {printable(since, 100)})"


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
    nothing to say: that its replay buffer was not saved (it restarts empty), and which fields its saved config
    lacks that ``cfg`` leaves at the defaults ``saved`` (:func:`resume_config`'s) gave them."""
    replay = (
        None
        if (checkpoint / REPLAY_FILE).is_file()
        else "the replay buffer was not saved (--save-replay): it restarts empty, and updates wait for "
        "--batch-size transitions"
    )  # saved without it, or it was deleted
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


_SAVE_LEFTOVERS = re.compile(r"\.(step_\d+)\.(tmp-[a-z0-9_]+|old-\d+)")
"""A save's temporary folder (``save_checkpoint``: ``.step_000000300.tmp-k2j4_x9q``) or the checkpoint it replaced
(``replace_directory``: ``.step_000000300.old-<pid>``)."""
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
    for directory, pattern in ((folder, _SAVE_LEFTOVERS), (folder, _LINK_LEFTOVERS), (run_dir, _RUN_LEFTOVERS)):
        try:
            entries = list(directory.iterdir()) if directory.is_dir() else []
        except OSError:
            continue
        for entry in entries:
            found = pattern.fullmatch(entry.name)
            if found is None:
                continue
            if pattern is _SAVE_LEFTOVERS:
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


def load_actor(path: str | Path, device: torch.device | str = "cpu") -> FlowActor:
    """The flow actor of a checkpoint, in eval mode, on ``device``. Loading leaves torch's global RNG
    as it was (the network's random initialisation, which the checkpoint's weights replace, draws from a fork)."""
    checkpoint = load_checkpoint(path)
    with torch.random.fork_rng(devices=[]):  # the actor is made on the CPU, and only then moved to ``device``
        actor = FlowActor.from_numpy(checkpoint.spec, checkpoint.actor, checkpoint.path)
    return actor.to(device).eval()


def actor_act_fn(
    actor: FlowActor, seed: int = 0, num_steps: int | None = None, deterministic: bool = False
) -> Callable[[np.ndarray], np.ndarray]:
    """``act(obs [obs_dim]) -> action`` sampling ``actor`` with ``num_steps`` (default: its spec's).

    Its noise is drawn as :class:`~flowrl_deploy.runtime.SeededPolicy` (and so ``flowrl eval`` of
    an ONNX export, a server session, a client's local fallback) draws it: numpy
    ``session_noise(seed)``, one float32 ``draw_noise`` block [1, act_dim] per action, moved to the
    actor's device. So a checkpoint and its export with the same seed play the same episodes (their
    actions equal to the export's parity tolerance), acting never shifts torch's global RNG, and a
    seed gives the same noise on a GPU as on the CPU. ``deterministic`` starts every ODE from
    a0 = 0 instead (the deterministic export).

    As :class:`~flowrl_deploy.runtime.SeededPolicy` does, it refuses with a :class:`FlowRLError` a
    ``num_steps`` outside [1, 1000] or a seed that is no uint64 here, and an observation other than
    [obs_dim] finite numbers at the act (:class:`~flowrl_deploy.codec.TensorError`)."""
    if num_steps is not None:
        if not is_integer(num_steps):
            raise FlowRLError(f"flow_steps must be a whole number, got {shown(num_steps)}")
        problem = flow_steps_problem("flow_steps", num_steps)
        if problem:
            raise FlowRLError(problem)
    device = next(actor.parameters()).device
    generator = session_noise(seed)

    @torch.no_grad()
    def act(obs: np.ndarray) -> np.ndarray:
        obs_t = torch.as_tensor(one_observation(obs, actor.spec.obs_dim), device=device)
        if deterministic:
            noise = torch.zeros(1, actor.spec.act_dim, device=device)
        else:
            noise = torch.from_numpy(draw_noise(generator, 1, actor.spec.act_dim)).to(device)
        return actor(obs_t, noise, num_steps=num_steps)[0].float().cpu().numpy()

    return act
