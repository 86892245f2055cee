"""The one checkpoint format: safetensors tensors plus a JSON document, written atomically.

A run directory looks like this::

    runs/cheetah/
        config.json                    # the TrainConfig, written before step 0
        metrics.jsonl, metrics.csv     # one row per log/eval
        tensorboard/                   # the same figures as TensorBoard events
        checkpoints/
            step_000050000/            # one checkpoint (a directory)
                checkpoint.json        # format tag, policy spec, config, counters, versions
                model.safetensors      # the actor (velocity field); spec repeated in __metadata__
                training_state.safetensors  # critics, targets, optimizer moments, RNG states
                training_state.json    # update count, optimizer hyper-state, warm-up and replay RNG states
                replay.safetensors     # the replay buffer, when saved
            last -> step_000050000     # symlinks, swapped atomically (on Windows: files
            best -> step_000040000     #   naming the checkpoint, see SYMLINK_LINKS)

A checkpoint directory is written under a temporary name and renamed into place, so a crash
while saving never leaves a half-written checkpoint under a name a reader trusts. This module
imports numpy and safetensors only: serving machines read specs without torch.
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save, save_file

from flowrl_deploy.atomic import apply_umask, fsync_dir, fsync_tree, os_reason, replace_directory, write_text_atomic
from flowrl_deploy.errors import CheckpointError, FlowRLError, SpecError, printable
from flowrl_deploy.fieldtypes import is_int
from flowrl_deploy.spec import PolicySpec
from flowrl_deploy.versions import library_versions, version_problem

FORMAT = "flowrl-deploy.checkpoint"
FORMAT_VERSION = 1
"""``checkpoint.json``'s ``format_version``: the files, the actor and the spec that export, eval and serve
read. Bump it when a change to them would make an older release misread a checkpoint: a newer one is refused
with "upgrade flowrl-deploy" (:func:`read_document`). Every release so far wrote 1, and a document without
it reads as 1."""
DOCUMENT_FILE = "checkpoint.json"
MODEL_FILE = "model.safetensors"
TRAINING_TENSORS_FILE = "training_state.safetensors"
TRAINING_JSON_FILE = "training_state.json"
REPLAY_FILE = "replay.safetensors"
CHECKPOINTS_DIR = "checkpoints"
RUN_CONFIG_FILE = "config.json"
METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
RUN_OUTPUTS = frozenset({RUN_CONFIG_FILE, METRICS_JSONL, METRICS_CSV, TENSORBOARD_DIR, CHECKPOINTS_DIR})
"""What a training run directory holds (written by flowrl_deploy.train): a new run may replace
only these, export must never overwrite them, and a report must never replace their JSON files."""
RUN_JSON_FILES = frozenset({RUN_CONFIG_FILE, METRICS_JSONL, DOCUMENT_FILE, TRAINING_JSON_FILE})
"""JSON files of a training run or a checkpoint: a report never replaces them, whatever folder they are in."""
RUN_TEXT_FILES = RUN_JSON_FILES | {METRICS_CSV}
"""Text files of a training run or a checkpoint: one given where an ONNX policy is expected is refused as
that run's or checkpoint's file (:func:`flowrl_deploy.onnxfile.not_onnx`)."""
LAST = "last"
BEST = "best"
MAX_STEP_DIGITS = 18


def step_name(step: int) -> str:
    """The folder name of the checkpoint saved at env step ``step``: ``step_000050000``."""
    return f"step_{step:09d}"


def step_of(name: str) -> int | None:
    """The env step of a checkpoint folder named ``name`` by :func:`step_name`, or None for any other name
    (``step_000050000.bak``, ``step_²``, ``step_50000``): only those are a run's checkpoints, which resuming,
    pruning and the new-run check look at; every other entry of the folder is left alone."""
    digits = name.removeprefix("step_")
    if digits == name or not (digits.isascii() and digits.isdigit()) or len(digits) > MAX_STEP_DIGITS:
        return None
    step = int(digits)
    return step if step_name(step) == name else None


def run_checkpoints(folder: Path) -> dict[int, Path]:
    """The checkpoints of a run's checkpoints ``folder`` by step: its entries named by :func:`step_name`
    (complete or not). One that leads out of the folder (a link to another run's checkpoint, which a
    resume would continue, writing into that run) is refused by name (:func:`confined`)."""
    steps = {step: entry for entry in folder.glob("step_*") if (step := step_of(entry.name)) is not None}
    for entry in steps.values():
        confined(entry, folder)
    return steps


def confined(entry: Path, folder: Path, reached: Path | None = None) -> Path:
    """``entry`` of a run's checkpoints ``folder`` (a checkpoint or a link to one), or the checkpoint ``reached``
    through it, as the run names it: ``folder/<name>``. Refused by name where it leads out of ``folder``: a resume
    continues, and writes into, the run a checkpoint lies in. Both sides are compared where they lead, so a
    ``folder`` that is itself a link (to scratch storage) holds the run's checkpoints. Only a resume (and what
    it reads, :func:`resume_point`) is confined: a reader follows a user's links wherever they lead."""
    real = Path(os.path.realpath(entry if reached is None else reached))  # realpath: no RuntimeError on a loop
    if os.path.islink(real):  # what realpath leaves of a loop
        raise CheckpointError(f"{entry} is a symbolic link loop; remove it")
    if real.parent != Path(os.path.realpath(folder)):
        to = os.readlink(entry) if entry.is_symlink() else real
        raise CheckpointError(
            f"{entry} leads out of {folder} (to {printable(to)}): a run's checkpoints lie in its own folder; remove it"
        )
    return folder / real.name


@dataclass
class Checkpoint:
    """A loaded checkpoint. Tensors are numpy arrays keyed by their module path."""

    path: Path
    spec: PolicySpec
    document: dict[str, Any]
    actor: dict[str, np.ndarray]
    training_tensors: dict[str, np.ndarray] = field(default_factory=dict)
    training_json: dict[str, Any] = field(default_factory=dict)
    replay: Mapping[str, np.ndarray] = field(default_factory=dict)
    """The saved replay buffer (``{}`` when none): a :class:`SavedTensors`, read from the file when used."""

    @property
    def config(self) -> dict[str, Any]:
        return self.document.get("config", {})

    @property
    def counters(self) -> dict[str, int]:
        return self.document.get("counters", {})


ACTOR_PREFIX = "velocity.net."
ACTOR_TENSORS = (
    "0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias", "4.weight", "4.bias", "6.weight", "6.bias",
)  # fmt: skip
"""The velocity MLP's tensors (:mod:`flowrl_deploy.train.velocity`, keys after :data:`ACTOR_PREFIX`) in
layer order: 0 Linear(obs + act + 1 → hidden), 1 LayerNorm, 3 Linear(hidden → hidden), 4 LayerNorm,
6 Linear(hidden → act); each weight before its bias."""


def actor_shapes(spec: PolicySpec) -> dict[str, tuple[int, ...]]:
    """The actor's tensors by name (FlowActor's ``state_dict`` keys, :data:`ACTOR_TENSORS`) and shape."""
    o, a, h = spec.obs_dim, spec.act_dim, spec.hidden
    shapes = [(h, o + a + 1), (h,), (h,), (h,), (h, h), (h,), (h,), (h,), (a, h), (a,)]
    return {ACTOR_PREFIX + key: shape for key, shape in zip(ACTOR_TENSORS, shapes, strict=True)}


def check_actor(actor: Mapping[str, np.ndarray], spec: PolicySpec, source: str | os.PathLike[str] = "") -> None:
    """Raise a one-line :class:`CheckpointError` (beginning with ``source``, the checkpoint, when
    given) unless ``actor`` holds exactly the tensors of ``spec``'s network (:func:`actor_shapes`),
    all finite; it names the tensor and the problem: unknown, missing, a shape the spec does not
    imply, NaN or infinity. The one check of the actor that evaluation, export and resume make."""
    expected = actor_shapes(spec)
    where = f"{source}: " if source else ""
    unknown, missing = sorted(set(actor) - set(expected)), sorted(set(expected) - set(actor))
    problems = [f"unknown tensors {unknown}"] if unknown else []
    problems += [f"missing {missing}"] if missing else []
    problems += [
        f"{key} has shape {tuple(np.shape(actor[key]))}, the spec implies {shape}"
        for key, shape in expected.items()
        if key in actor and tuple(np.shape(actor[key])) != shape
    ]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"{where}the actor weights do not match its spec: {problems[0]}{more}")
    for key in expected:
        if not np.isfinite(actor[key]).all():
            raise CheckpointError(f"{where}actor tensor {key} holds NaN or infinite values (training diverged?)")


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    spec: PolicySpec,
    actor: dict[str, np.ndarray],
    config: dict[str, Any] | None = None,
    counters: dict[str, int] | None = None,
    extra: dict[str, Any] | None = None,
    training_tensors: dict[str, np.ndarray] | None = None,
    training_json: dict[str, Any] | None = None,
    replay: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write a checkpoint directory at ``path`` atomically and return its path.

    An existing checkpoint at ``path`` is replaced only once the new one is complete.
    """
    final = Path(path)
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": spec.to_dict(),
        "env_id": spec.env_id,
        "config": config or {},
        "counters": counters or {},
        "versions": library_versions(),
        **(extra or {}),
    }
    tmp: Path | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        model = save(_contiguous(actor), metadata={"format": FORMAT, "spec": json.dumps(spec.to_dict())})
        (tmp / MODEL_FILE).write_bytes(_canonical_header(model))
        if training_tensors:
            save_file(_contiguous(training_tensors), str(tmp / TRAINING_TENSORS_FILE))
        if training_json:
            _write_json(tmp / TRAINING_JSON_FILE, training_json)
        if replay:
            save_file(_contiguous(replay), str(tmp / REPLAY_FILE))
        _write_json(tmp / DOCUMENT_FILE, document)  # last: its presence marks a complete checkpoint
        for child in (*tmp.iterdir(), tmp):
            apply_umask(child)
        fsync_tree(tmp)
        replace_directory(tmp, final)
        fsync_dir(final.parent)
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (OSError, SafetensorError)):
            raise CheckpointError(f"cannot write the checkpoint {final}: {_reason(exc)}") from exc
        raise
    return final


def _canonical_header(data: bytes) -> bytes:
    """``data``, a safetensors file's bytes, with its JSON header's keys sorted (compact JSON, padded
    with spaces to 8-byte alignment as safetensors pads it), so that equal tensors and metadata give
    equal bytes. safetensors (0.8.0 and before) writes ``__metadata__``'s keys in a random order per
    save (safetensors#584), so identical runs' model.safetensors, and the ``source_sha256`` their
    exports record, differed about half the time. The tensor data and its offsets are unchanged."""
    length = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + length]), separators=(",", ":"), sort_keys=True).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + data[8 + length :]


def _reason(exc: OSError | SafetensorError) -> str:
    """What went wrong, without Python's errno prefix: 'File exists (/runs/x/checkpoints)'; of safetensors'
    I/O errors, the system's words alone ('No space left on device'), not its Rust wording and the name
    of its temporary file, gone by now."""
    if isinstance(exc, OSError):
        return os_reason(exc)
    io_error = re.search(r"I/O error: (.+?) \(os error \d+\)", str(exc))
    return io_error[1] if io_error else str(exc)


SYMLINK_LINKS = os.name != "nt"
"""Whether ``last``/``best`` are symlinks. Not on Windows: making one needs admin or Developer Mode, and
even then a directory symlink cannot be replaced by a rename; there (and wherever a symlink cannot be
made: a FAT or exFAT drive) each is a pointer file holding the checkpoint's name, replaced atomically.
:func:`read_checkpoint_link` reads both."""


NO_SYMLINKS = (errno.EPERM, errno.EOPNOTSUPP)
"""How Linux refuses a symlink on a file system that cannot hold one: a FAT or exFAT drive, a CIFS share mounted
without mfsymlinks. :func:`link_checkpoint` then writes a pointer file."""


def symlinks_refused(directory: Path) -> bool:
    """Whether ``directory``'s file system refuses symlinks (:data:`NO_SYMLINKS`) on a system whose links are
    symlinks (:data:`SYMLINK_LINKS`): :func:`link_checkpoint` writes pointer files there instead."""
    if not SYMLINK_LINKS:
        return False
    probe = directory / f".symlink-probe-{os.getpid()}"
    try:
        os.symlink(".", probe)
    except OSError as exc:
        return exc.errno in NO_SYMLINKS  # another error (a read-only folder) is the save's to report
    with contextlib.suppress(OSError):
        probe.unlink()
    return False


def link_checkpoint(checkpoints_dir: str | os.PathLike[str], name: str, target: str | os.PathLike[str]) -> None:
    """Point ``checkpoints_dir/name`` (e.g. ``last``) at ``target`` with an atomic symlink swap, or where no
    symlink can be made (:data:`SYMLINK_LINKS`) an atomic write of a pointer file naming it."""
    directory = Path(checkpoints_dir)
    link, target_name = directory / name, Path(target).name
    if SYMLINK_LINKS and _symlink_swap(directory, name, target_name):
        return
    try:
        write_text_atomic(link, f"{target_name}\n")
    except FlowRLError as exc:
        raise CheckpointError(f"cannot point {link} at {target_name}: {exc}") from exc


def _symlink_swap(directory: Path, name: str, target_name: str) -> bool:
    """Swap the symlink; False where the file system cannot hold one (:data:`NO_SYMLINKS`). Never called on
    Windows (:data:`SYMLINK_LINKS`)."""
    tmp_link = directory / f".{name}.link-{os.getpid()}"
    try:
        if tmp_link.is_symlink() or tmp_link.exists():
            tmp_link.unlink()
        os.symlink(target_name, tmp_link)
        os.replace(tmp_link, directory / name)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp_link.unlink()
        if exc.errno in NO_SYMLINKS:
            return False
        raise CheckpointError(f"cannot point {directory / name} at {target_name}: {_reason(exc)}") from exc
    return True


def copied_checkpoint(entry: Path, *, thorough: bool = False) -> Path | None:
    """The step folder of which ``entry``, a run's ``checkpoints/last`` or ``best`` that is a folder rather than a
    link (a run copied with links followed: ``cp -rL``, ``scp -r``, a cloud sync), is a copy: the newest one beside
    it holding the same files, each of the same size, and the same ``checkpoint.json`` (which records the step);
    with ``thorough``, each file the same byte for byte (before the copy is deleted). None where none is, or
    where ``entry`` is no such folder."""
    if entry.name not in (LAST, BEST) or entry.is_symlink() or not entry.is_dir():
        return None
    try:
        files, document = _file_sizes(entry), (entry / DOCUMENT_FILE).read_bytes()
        for _, candidate in sorted(run_checkpoints(entry.parent).items(), reverse=True):
            if candidate.is_symlink() or not candidate.is_dir() or not (candidate / DOCUMENT_FILE).is_file():
                continue
            if (candidate / DOCUMENT_FILE).read_bytes() != document or _file_sizes(candidate) != files:
                continue
            if not thorough or all(filecmp.cmp(entry / name, candidate / name, shallow=False) for name in files):
                return candidate
    except OSError:
        return None
    return None


def _file_sizes(folder: Path) -> dict[str, int]:
    """The files under ``folder``, by path relative to it, with their sizes (a folder inside counts as a file of
    size -1, so two trees compare equal only where both are files alike)."""
    sizes = {}
    for root, dirs, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            sizes[str(path.relative_to(folder))] = path.stat().st_size
        for name in dirs:
            sizes[str((Path(root) / name).relative_to(folder))] = -1
    return sizes


def copied_link_refusal(entry: Path) -> str:
    """Why the run of ``entry``, a ``checkpoints/last`` or ``best`` folder that copies no step folder beside it
    (:func:`copied_checkpoint`), is not resumed, and what to do: nothing deletes it."""
    kept = free_name(entry.parent.parent / entry.name, ".kept")
    return (
        f"{entry} is a folder, not a link to a checkpoint (the run was copied with links followed: cp -L, scp -r, "
        "a cloud sync?), and no step_* folder beside it holds the same files, so it is not deleted: move it out of "
        f"{entry.parent} (mv {shlex.quote(str(entry))} {shlex.quote(str(kept))}) and resume again; {entry.name} is "
        "made anew"
    )


def free_name(entry: Path, suffix: str) -> Path:
    """``entry`` + ``suffix``, or + ``suffix-2``, ``-3``, … where that name is taken."""
    aside, n = entry.with_name(entry.name + suffix), 1
    while aside.exists() or aside.is_symlink():
        n += 1
        aside = entry.with_name(f"{entry.name}{suffix}-{n}")
    return aside


def read_checkpoint_link(link: str | os.PathLike[str]) -> str | None:
    """What the link ``link`` (a run's ``checkpoints/last`` or ``best``, or a user's link to one) names, as
    written: a symlink's target, or the checkpoint named by a pointer file (:data:`SYMLINK_LINKS`); None when
    it is neither. The checkpoint is ``link``'s folder joined with it. A pointer file naming anything but a
    folder beside it (a path, an empty or long text) is refused by name: it is no checkpoint link."""
    link = Path(link)
    if link.is_symlink():
        return os.readlink(link)
    if not link.is_file():
        return None
    try:
        with open(link, "rb") as f:
            data = f.read(256)
    except OSError as exc:
        raise CheckpointError(f"cannot read {link}: {_reason(exc)}") from exc
    name = data.decode(json.detect_encoding(data), "replace").strip()  # as json.loads reads bytes: a BOM, UTF-16
    if len(data) >= 256 or name in ("", ".", "..") or not name.isprintable() or any(c in name for c in "/\\:"):
        raise CheckpointError(
            f"{link} is no checkpoint link: it should hold the name of a checkpoint folder beside it "
            f"('{printable(name, 60)}')"
        )
    return name


def check_output_path(flag: str, path: str | os.PathLike[str]) -> None:
    """Refuse an output file that would destroy something: a file inside a checkpoint directory
    (its weights or document), an existing path that is not a regular file (``/dev/null``
    would be replaced by the atomic rename), or a path that leads into ``/proc``: ``/dev/stdout``
    (a link to ``/proc/self/fd/1``) with stdout on a file is a regular file by its target, and the
    rename would replace the system's link by a file (as root)."""
    p = Path(path)
    if p.exists() and not p.is_file():
        raise FlowRLError(f"{flag} {p} exists and is not a regular file; give a file path")
    check_not_a_stream(flag, p)
    if (p.parent / DOCUMENT_FILE).is_file():
        raise FlowRLError(f"{flag} {p} lies inside the checkpoint {p.parent}; write it elsewhere")


def check_not_a_stream(flag: str, path: str | os.PathLike[str]) -> None:
    """Refuse an output ``path`` that, or a link on whose way, leads into ``/proc`` (``/dev/stdout``,
    ``/dev/fd/1``): a stream of the process, which a file renamed onto the path would replace."""
    hop, hops = Path(path).absolute(), 0
    while True:
        try:
            folder = hop.parent.resolve()
            link = hop.is_symlink() and hops < 40  # 40: as the kernel's limit on links in a row
            target = os.readlink(hop) if link else ""
        except (OSError, RuntimeError) as exc:  # RuntimeError: Python 3.11's "Symlink loop"
            raise FlowRLError(f"{flag} {path}: its folder cannot be followed ({exc})") from None
        if folder.is_relative_to("/proc"):
            raise FlowRLError(
                f"{flag} {path} leads to {folder / hop.name}, a stream of the process, not a file; give a file path"
            )
        if not link:
            return
        hop, hops = folder / target, hops + 1  # ".." in the target: the next hop's resolve() takes it


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """Find the checkpoint directory meant by ``path``.

    Accepts a checkpoint directory, its ``model.safetensors``, a run directory (its ``last``
    checkpoint) or a run's ``checkpoints/`` directory.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.is_file():
        if p.name in (MODEL_FILE, DOCUMENT_FILE):
            return p.parent
        if p.name not in (LAST, BEST):
            raise CheckpointError(
                f"{p} is a file, not a flowrl-deploy checkpoint; pass a checkpoint directory "
                f"(holding {DOCUMENT_FILE} and {MODEL_FILE}) or a run directory"
            )
    links = ((p,) if p.name in (LAST, BEST) else ()) + (p / LAST, p / CHECKPOINTS_DIR / LAST)
    named = {link: read_checkpoint_link(link) for link in links}
    candidates = [p] + [link.parent / name if name is not None else link for link, name in named.items()]
    for candidate in candidates:
        if (candidate / DOCUMENT_FILE).is_file() or (candidate / MODEL_FILE).is_file():
            return candidate.resolve()
    for link, name in named.items():
        if name is not None and not (link.parent / name).exists():
            raise CheckpointError(f"{link} points at {printable(name)}, which is missing; pass a step_* checkpoint")
    run = p.parent if p.name == CHECKPOINTS_DIR else p
    complete = sorted(d for d in (run / CHECKPOINTS_DIR).glob("step_*") if (d / DOCUMENT_FILE).is_file())
    if complete:  # its last link lost (a copy without links, a kill before the first link): name them
        raise CheckpointError(
            f"{run} has checkpoints but no {LAST} link: pass one, e.g. {complete[-1]} (flowrl train --resume "
            f"{run} makes the link again)"
        )
    if (run / RUN_CONFIG_FILE).is_file():
        raise CheckpointError(
            f"{run} is a training run with no checkpoint yet: a run writes its first at its first evaluation "
            "or save (--eval-every, --save-every); wait for it if the run is training, or pass another run"
        )
    raise CheckpointError(
        f"{p} holds no flowrl-deploy checkpoint (no {DOCUMENT_FILE}, no {LAST}/ or {CHECKPOINTS_DIR}/{LAST}/)"
    )


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_identity(path: str | os.PathLike[str]) -> tuple[str, str, str]:
    """The checkpoint directory ``path`` resolves to (:func:`resolve_checkpoint`) and the sha256 of
    the two files an export reads from it (its tensors and its document): equal identities export to
    the same policy."""
    directory = resolve_checkpoint(path)

    def digest(name: str) -> str:
        if not _present(directory / name):  # a pipe is refused, never read: reading one blocks
            raise CheckpointError(f"{directory / name} is missing: the checkpoint is incomplete")
        return file_sha256(directory / name)

    return str(directory), digest(MODEL_FILE), digest(DOCUMENT_FILE)


def resume_point(path: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """The checkpoint that resuming ``path`` continues, and a warning or None: the checkpoint it names,
    or for a run directory (or its ``checkpoints/``) the newest complete ``step_*`` one (each is renamed
    into place whole) that is intact (:func:`checkpoint_damage`). That is ``last``'s, unless the run was killed
    between saving a checkpoint and moving ``last`` to it, or a newer one is damaged; the warning then says
    that ``last`` is behind, or which checkpoint was skipped and why, for the resume that moves ``last``.
    A run whose complete checkpoints are all damaged, or a damaged checkpoint named in a run's folder, is
    refused in one line naming its files and what to do instead.

    A checkpoint of a run's checkpoints folder (reached through a link, a pointer file or a file of it) must lie
    in that folder, and is returned as the run names it (:func:`confined`): a link planted in run A must not
    make ``--resume A`` continue, and write into, run B."""
    p = Path(os.path.abspath(path))  # not resolved: `--resume step_…` from inside a checkpoints folder is in it
    folder = p if p.name == CHECKPOINTS_DIR else p / CHECKPOINTS_DIR
    if (p / DOCUMENT_FILE).exists() or not folder.is_dir():
        entry = p.parent if p.name in (DOCUMENT_FILE, MODEL_FILE) else p
        if entry.parent.name != CHECKPOINTS_DIR:  # in no run's folder: run_to_resume says so
            return resolve_checkpoint(p), None
        if entry.name in (LAST, BEST) and entry.is_dir() and not entry.is_symlink():  # a copied run's: a copy
            copy_of = copied_checkpoint(entry)  # the resume makes it a link again (RunCheckpoints.repair)
            if copy_of is None:
                raise CheckpointError(copied_link_refusal(entry))
            entry = p = copy_of
        checkpoint = confined(entry, entry.parent, resolve_checkpoint(p))
        damage = checkpoint_damage(checkpoint)
        if damage is not None:
            raise CheckpointError(f"{checkpoint} is damaged: {damage}; {_instead(checkpoint.parent, checkpoint)}")
        return checkpoint, None
    steps = {step: c for step, c in run_checkpoints(folder).items() if (c / DOCUMENT_FILE).is_file()}
    last = folder / LAST
    if not steps:
        return confined(last, folder, resolve_checkpoint(p)), None
    newest, skipped = _newest_intact(steps)
    if newest is None:
        listed = "; ".join(f"{c.name}: {damage}" for c, damage in skipped[:3])
        more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        raise CheckpointError(
            f"{folder} holds no intact checkpoint to resume ({listed}{more}); restore one from a copy of the run, "
            "or start the run again in a new folder (flowrl train … --out NEW_FOLDER)"
        )
    if skipped:
        gone, damage = skipped[0]
        return newest, (
            f"{gone} is damaged: {damage}; the run resumes from {newest.name}, its newest intact checkpoint "
            f"({_steps_between(newest, gone)} env steps to redo)"
        )
    name = read_checkpoint_link(last)
    if name is not None and os.path.realpath(folder / name) == os.path.realpath(newest):
        return newest, None
    behind = "is missing" if name is None else f"points at {printable(name)}"
    return newest, (
        f"{last} {behind}, not at the newest complete checkpoint {newest.name} (the run was killed between "
        f"saving a checkpoint and moving {LAST}?); {LAST} now names it"
    )


def _newest_intact(steps: dict[int, Path]) -> tuple[Path | None, list[tuple[Path, str]]]:
    """Of a run's complete checkpoints by step, the newest intact one (None: none is), and the damaged ones
    newer than it, newest first, each with what is wrong."""
    skipped = []
    for step in sorted(steps, reverse=True):
        damage = checkpoint_damage(steps[step])
        if damage is None:
            return steps[step], skipped
        skipped.append((steps[step], damage))
    return None, skipped


def _steps_between(older: Path, newer: Path) -> str:
    """How many env steps lie between two checkpoints of a run, by their names ('?' where one has no step)."""
    a, b = step_of(older.name), step_of(newer.name)
    return "?" if a is None or b is None else str(b - a)


def _instead(folder: Path, damaged: Path) -> str:
    """What to run instead of resuming the damaged checkpoint ``damaged`` of a run's checkpoints ``folder``."""
    steps = {
        step: c
        for step, c in run_checkpoints(folder).items()
        if (c / DOCUMENT_FILE).is_file() and os.path.realpath(c) != os.path.realpath(damaged)
    }
    newest, _ = _newest_intact(steps)
    if newest is None:
        return (
            "no other checkpoint of the run is intact: restore it from a copy of the run, or start the run again "
            "in a new folder (flowrl train … --out NEW_FOLDER)"
        )
    return (
        f"resume the run instead, from its newest intact checkpoint {newest.name}, which leaves this one aside: "
        f"flowrl train --resume {shlex.quote(str(folder.parent))}"
    )


SAFETENSORS_FILES = (MODEL_FILE, TRAINING_TENSORS_FILE, REPLAY_FILE)
"""A checkpoint's tensor files; the first is in every checkpoint, the first two in every one a run saves."""
MAX_SAFETENSORS_HEADER = 100_000_000
"""The largest header safetensors reads (its own limit): a larger length is damage, not a header."""


def checkpoint_damage(directory: Path) -> str | None:
    """What is damaged in a run's checkpoint folder whose document is in place (a save renames it whole, so
    this is a file cut short, zeroed or lost since: a full disk while copying, a lossy network file system,
    files deleted), or None: ``checkpoint.json`` or ``training_state.json`` that is no JSON, ``model.safetensors``
    missing, a tensor file whose header does not parse or whose size is not the one its header gives
    ('training_state.safetensors is cut short (100000 of 312544 bytes)'). A checkpoint without training state
    (the policy alone) is whole: resuming it is refused as such. Only the files' structure is read, never their
    numbers: a resume refuses a readable but wrong document or tensor by name, and tensor data zeroed under an
    intact header passes."""
    for name in (DOCUMENT_FILE, TRAINING_JSON_FILE, *SAFETENSORS_FILES):
        path = directory / name
        if not path.exists():
            if name != DOCUMENT_FILE and name != MODEL_FILE:  # a checkpoint of the policy alone is whole
                continue
            return f"{name} is missing"
        if not path.is_file():  # never opened: reading a pipe blocks
            return f"{name} is not a regular file (a directory, device, pipe or socket)"
        try:
            problem = _json_problem(path) if name.endswith(".json") else _safetensors_problem(path)
        except OSError:  # unreadable (permissions), not damaged: the resume's load names it
            continue
        if problem is not None:
            return f"{name} {problem}"
    return None


def _json_problem(path: Path) -> str | None:
    """Why a JSON file of a checkpoint does not parse, or None (a nesting too deep is no damage: reading it says so)."""
    try:
        json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"is not valid JSON ({exc})"
    except RecursionError:
        pass
    return None


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with the structure of a safetensors file (its 8-byte header length, JSON header and data
    size), or None; an OSError where it cannot be read."""
    size = path.stat().st_size
    if size < 8:
        return f"is cut short ({size} bytes, not even its header)"
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if length == 0 or length > MAX_SAFETENSORS_HEADER:
            return "has no valid header (zeroed or overwritten?)"
        if length > size - 8:
            return f"is cut short ({size} bytes, not even its {8 + length}-byte header)"
        head = f.read(length)
    try:
        header = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return "has a header that is no JSON (zeroed or overwritten?)"
    try:
        ends = [int(info["data_offsets"][1]) for key, info in header.items() if key != "__metadata__"]
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return "has a header that is not a safetensors one"
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        return f"is cut short ({size} of {expected} bytes)"
    if size > expected:
        return f"is longer than its header says ({size} bytes, not {expected})"
    return None


def read_document(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a checkpoint's JSON document without loading any tensor."""
    directory = resolve_checkpoint(path)
    doc_path = directory / DOCUMENT_FILE
    if not _present(doc_path):
        raise CheckpointError(f"{directory} lacks {DOCUMENT_FILE}: it is incomplete or not a flowrl-deploy checkpoint")
    try:
        document = json.loads(doc_path.read_bytes())  # bytes: UTF-8 with or without a BOM, UTF-16
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{doc_path} is corrupt (not valid JSON: {exc})") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(f"{doc_path} is not a flowrl-deploy checkpoint (format tag missing or foreign)")
    version, counters = document.get("format_version", 1), document.get("counters", {})
    if problem := version_problem(version, "format_version", FORMAT_VERSION):
        raise CheckpointError(f"{doc_path}: {problem}")
    if not (isinstance(counters, dict) and all(is_int(v) and v >= 0 for v in counters.values())):
        raise CheckpointError(
            f"{doc_path}: counters must be a JSON object of non-negative integers, got {counters!r:.200}"
        )
    return document


def read_spec(path: str | os.PathLike[str]) -> PolicySpec:
    """The policy spec of a checkpoint, read without loading tensors."""
    directory = resolve_checkpoint(path)
    return spec_of(read_document(directory), directory)


def spec_of(document: dict[str, Any], directory: Path) -> PolicySpec:
    """The policy spec in a checkpoint's document (from :func:`read_document`), refused naming ``directory``."""
    try:
        return PolicySpec.from_dict(document.get("spec"))
    except SpecError as exc:
        raise CheckpointError(f"{directory}: {exc}") from exc


def load_checkpoint(path: str | os.PathLike[str], *, training_state: bool = False) -> Checkpoint:
    """Load a checkpoint; with ``training_state`` also critics, optimizers, RNG and replay."""
    directory = resolve_checkpoint(path)
    document = read_document(directory)
    spec = spec_of(document, directory)
    actor = _load_tensors(directory / MODEL_FILE, required=True)
    for name, tensor in actor.items():  # an integer or bool weight is corruption, not a quantized model
        if tensor.dtype.kind != "f":
            raise CheckpointError(
                f"{directory / MODEL_FILE}: actor tensor {name} has dtype {tensor.dtype}; "
                "weights must be floating point"
            )
    checkpoint = Checkpoint(directory, spec, document, actor)
    if training_state:
        if not _present(directory / TRAINING_TENSORS_FILE):
            raise CheckpointError(
                f"{directory} holds only the policy (no {TRAINING_TENSORS_FILE}): it can be evaluated "
                "and exported, not resumed"
            )
        checkpoint.training_tensors = _load_tensors(directory / TRAINING_TENSORS_FILE, required=True)
        json_path = directory / TRAINING_JSON_FILE
        if _present(json_path):
            try:
                checkpoint.training_json = json.loads(json_path.read_bytes())
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise CheckpointError(f"{json_path} is corrupt (not valid JSON: {exc})") from exc
        replay_path = directory / REPLAY_FILE  # read when restored, a block at a time: not all of it here
        checkpoint.replay = SavedTensors(replay_path) if _present(replay_path) else {}
    return checkpoint


def _present(path: Path) -> bool:
    """Whether a checkpoint file is there. One that exists but is no regular file is refused by name
    (reading a pipe blocks, deaf to SIGTERM), not taken as absent."""
    if path.is_file():
        return True
    if path.exists():
        raise CheckpointError(f"{path} is not a regular file (a directory, device, pipe or socket)")
    return False


def _load_tensors(path: Path, *, required: bool) -> dict[str, np.ndarray]:
    if not _present(path):
        if required:
            raise CheckpointError(f"{path} is missing: the checkpoint is incomplete")
        return {}
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt or not a safetensors file ({exc})") from exc


REPLAY_BLOCK_BYTES = 32 * 2**20
"""At most how much of a tensor :meth:`SavedTensors.copy_into` reads at a time (counting 8 bytes a number)."""


class SavedTensors(Mapping[str, np.ndarray]):
    """The tensors of a safetensors file, read when used rather than all at once: their names and shapes come
    from its header (read, and checked by safetensors, when this is made), looking one up reads that tensor (a
    new array each time, not kept), and :meth:`copy_into` copies one into an array a block of rows at a time.

    A checkpoint's saved replay buffer is one: a resume copies it into the run's buffer, already allocated, a
    block at a time, so it needs the buffer and one block (:data:`REPLAY_BLOCK_BYTES`) more. Loading the whole
    file first took twice the buffer (3.9 GiB for dmc:dog-run's 1.8 GiB buffer). The file is read again at each
    use, so it must still be in place; a read that fails is a :class:`CheckpointError` naming it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._identity: tuple[int, int, int] | None = None  # the file first read (inode, size, mtime)
        with self._open() as f:
            self._shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor ``name``, from the header: nothing is read."""
        return self._shapes[name]

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._shapes:
            raise KeyError(name)
        with self._open() as f:
            return f.get_tensor(name)

    def __contains__(self, name: object) -> bool:  # Mapping's would read the tensor
        return name in self._shapes

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)

    def __repr__(self) -> str:
        return f"SavedTensors({str(self.path)!r}, {self._shapes!r})"

    def copy_into(self, name: str, out: np.ndarray) -> None:
        """Copy tensor ``name`` into ``out``, of its shape (or one it broadcasts to, row for row), converting
        to ``out``'s dtype, at most :data:`REPLAY_BLOCK_BYTES` at a time."""
        shape = self.shape(name)
        if not shape:  # a single number: no rows to read a block of
            out[...] = self[name]
            return
        if len(out) != shape[0]:
            raise ValueError(f"{name} has {shape[0]} rows, not the {len(out)} it is copied into")
        rows = max(1, REPLAY_BLOCK_BYTES // (8 * max(1, math.prod(shape[1:]))))
        for start, block in self._blocks(name, rows):
            out[start : start + len(block)] = block
            del block

    def _blocks(self, name: str, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        length = self._shapes[name][0]
        for start in range(0, length, rows):  # the file opened (mapped) per block: its pages not held in memory
            with self._open() as f:
                block = f.get_slice(name)[start : min(start + rows, length)]  # no stop past the end: refused
            yield start, block
            del block

    @contextlib.contextmanager
    def _open(self) -> Iterator[Any]:
        """The file opened with safetensors; what it raises for a file it cannot read (damage, a dtype numpy
        lacks) is a :class:`CheckpointError` naming it, and so is a file removed or replaced since the first read,
        before or while this one read it (another process writing the run's folder): its blocks would mix two
        buffers."""
        self._check_unchanged()
        try:
            with safe_open(str(self.path), framework="np") as f:
                yield f
        except (SafetensorError, OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{self.path} is corrupt or not a safetensors file ({exc})") from exc
        self._check_unchanged()

    def _check_unchanged(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            raise CheckpointError(f"{self.path} was removed while it was read") from None
        except OSError as exc:
            raise CheckpointError(f"cannot read {self.path}: {os_reason(exc)}") from exc
        identity = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if self._identity is not None and identity != self._identity:
            raise CheckpointError(f"{self.path} changed while it was read (another process wrote the run's folder?)")
        self._identity = identity


def _contiguous(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v) for k, v in tensors.items()}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
