"""Which checkpoints a run keeps (:class:`RunCheckpoints`): the ``last`` and ``best`` links a save moves,
pruning the step folders neither names, the replay buffers dropped from all but the newest two checkpoints, and
the repairs a resume makes first (``best`` and ``last`` pointed where a crash left them behind, damaged
checkpoints set aside, links a copy turned into folders made links again)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from flowrl_deploy.atomic import fsync_dir, os_reason, write_text_atomic
from flowrl_deploy.checkpoint import (
    BEST,
    CHECKPOINTS_DIR,
    DOCUMENT_FILE,
    LAST,
    REPLAY_FILE,
    checkpoint_damage,
    copied_checkpoint,
    copied_link_refusal,
    free_name,
    link_checkpoint,
    read_checkpoint_link,
    run_checkpoints,
    step_name,
    step_of,
)
from flowrl_deploy.errors import CheckpointError, FlowRLError, printable
from flowrl_deploy.train.checkpointing import own_eval_return

SAVE_LEFTOVERS = re.compile(r"\.(step_\d+)\.(tmp-[a-z0-9_]+|old-\d+)")
"""A save's temporary folder (``save_checkpoint``: ``.step_000000300.tmp-k2j4_x9q``) or the checkpoint it replaced
(``replace_directory``: ``.step_000000300.old-<pid>``)."""
REPLAY_DROPPED_FILE = "replay.dropped"
"""A checkpoint's note that a save dropped its ``replay.safetensors`` to save disk (:meth:`RunCheckpoints.save`),
written before the file is deleted: a resume from it says so rather than that the buffer was never saved."""


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

    A ``--save-replay`` buffer is kept only where a resume may need it: in the checkpoint ``last`` names and the
    newest intact one before it (the resume's fallback where the newest is damaged). Each save then deletes the
    ``replay.safetensors`` of every older checkpoint (:meth:`_drop_replays`), which would otherwise add a whole
    buffer per periodic checkpoint: disk quadratic in the run's length. Such a checkpoint stays intact, and
    resumes (a branch of the run) with an empty buffer and a warning saying why.
    """

    def __init__(self, run_dir: str | Path, save_every: int) -> None:
        self.dir = Path(run_dir) / CHECKPOINTS_DIR
        self.save_every = save_every
        self._written: int | None = None
        self.written: Path | None = None
        """The newest checkpoint this run wrote: complete, whether or not its links moved after it."""
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
        target = path if best else self.repair_best(quiet=True)[0]
        if best:
            link_checkpoint(self.dir, BEST, path)
        link_checkpoint(self.dir, LAST, path)
        self._prune(target)
        self._drop_replays(path)  # last: only once last names the new checkpoint, and after the prune
        return path

    def best_checkpoint(self) -> tuple[Path, float] | None:
        """The checkpoint ``best`` should name, and its evaluation return: of this folder's checkpoints, the one
        whose own evaluation (:func:`~flowrl_deploy.train.checkpointing.own_eval_return`) returned the most, the
        later one of a tie (as a new best replaces an equal one); None where none records one (no evaluation yet,
        or only checkpoints saved before the step of their evaluation was recorded, but the one ``best`` names)."""
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

    def repair_best(self, quiet: bool = False) -> tuple[Path | None, str | None]:
        """Point ``best`` at :meth:`best_checkpoint` where it names another one (or none): a run killed after
        a new best's checkpoint was in place but before ``best`` moved. Returns that checkpoint (None: none
        records its evaluation) and, unless ``quiet``, what moved, as a warning (None: nothing moved)."""
        found = self.best_checkpoint()
        if found is None:
            return None, None
        target, value = found
        named = self._named(BEST)
        if named is not None and os.path.realpath(self.dir / named) == os.path.realpath(target):
            return target, None
        link_checkpoint(self.dir, BEST, target)
        if quiet:
            return target, None
        if named is not None and not (self.dir / named).exists():  # set aside as damaged, or deleted
            return target, (
                f"{self.dir / BEST} named {printable(named)}, which is gone; it now names {target.name}, the "
                f"checkpoint whose evaluation returned the most ({value:g})"
            )
        was = "is missing" if named is None else f"pointed at {printable(named)}"
        return target, (
            f"{self.dir / BEST} {was}, not at {target.name}, the checkpoint whose evaluation returned the most "
            f"({value:g}; the run was killed between saving it and moving {BEST}?); {BEST} now names it"
        )

    def repair(self, start: Path, behind: str | None = None) -> list[str]:
        """Make the folder what a resume from ``start`` needs: the damaged or incomplete checkpoints after it
        set aside (:meth:`set_aside_after`), then ``best`` (:meth:`repair_best`) and ``last`` pointed where they
        belong (a run killed between saving a checkpoint and moving its links). Returns what changed, as
        warnings (``behind``: :func:`~flowrl_deploy.checkpoint.resume_point`'s, for a moved ``last``). First,
        ``last`` and ``best`` of a run copied with links followed become links again (:meth:`relink_copies`)."""
        relinked = self.relink_copies()
        set_aside = self.set_aside_after(start)
        warnings = relinked + set_aside
        moved = self.repair_best()[1]
        warnings += [moved] if moved else []
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
        resume repairs, and the copy aside (:func:`~flowrl_deploy.train.resume.remove_leftovers` removes it). A
        folder that copies no step folder is never deleted: refused, saying what to do. Returns one line saying
        what it made, or none."""
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
            found = SAVE_LEFTOVERS.fullmatch(partial.name)
            if found and found[2].startswith("tmp-") and step_of(found[1]) is not None and not partial.is_symlink():
                shutil.rmtree(partial, ignore_errors=True)

    def _drop_replays(self, last: Path) -> None:
        """Delete the replay buffer of each checkpoint before the newest intact one before ``last`` (the one
        ``last`` names, never touched, as is every later or damaged one): a resume continues ``last``, or where
        that is damaged the newest intact one before it, and an older buffer serves no resume. Each is noted in
        :data:`REPLAY_DROPPED_FILE` first (synced), then unlinked: a kill between leaves the buffer in place, and
        a checkpoint with or without its buffer is intact (:func:`~flowrl_deploy.checkpoint.checkpoint_damage`).
        One that cannot be dropped stays: the next save tries again."""
        newest = step_of(last.name)
        if newest is None:
            return
        older = sorted(
            ((step, entry) for entry in self.dir.glob("step_*") if (step := step_of(entry.name)) is not None),
            reverse=True,
        )
        fallback = None
        for step, entry in older:
            if step >= newest or entry.is_symlink() or not entry.is_dir():
                continue
            if fallback is None:
                if (entry / DOCUMENT_FILE).is_file() and checkpoint_damage(entry) is None:
                    fallback = entry  # keeps its buffer, and so does any damaged one after it
                continue
            _drop_replay(entry, last.name)


def _drop_replay(checkpoint: Path, last: str) -> None:
    """Delete ``checkpoint``'s replay buffer, where it holds one, noting why in :data:`REPLAY_DROPPED_FILE`."""
    replay = checkpoint / REPLAY_FILE
    if replay.is_symlink() or not replay.is_file():
        return
    try:
        size = replay.stat().st_size
        write_text_atomic(  # whole or not at all: a full disk leaves no empty note beside the buffer it kept
            checkpoint / REPLAY_DROPPED_FILE,
            f"{REPLAY_FILE} ({size} bytes) was deleted to save disk when {last} was saved: a run keeps its replay "
            f"buffer only in {LAST} and the checkpoint before it. Resuming this checkpoint (a branch of the run) "
            "starts with an empty buffer.\n",
        )
        fsync_dir(checkpoint)
        replay.unlink()
    except (OSError, FlowRLError):
        pass  # kept: the next save tries again


def _document_or_none(checkpoint: Path) -> dict | None:
    """A checkpoint folder's document as JSON, or None where it cannot be read (incomplete, damaged)."""
    try:
        document = json.loads((checkpoint / DOCUMENT_FILE).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None
