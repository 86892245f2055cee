"""Reloading: which files a ``Reload`` call may load (:func:`reload_target`, confined to what is
served), and ``--watch``, which reloads the model when what is served changes.

What is watched follows what is served: for an ONNX file, the file; for a run or checkpoint
directory, the checkpoint it resolves to (``checkpoints/last`` moves as training saves) and that
checkpoint's ``checkpoint.json``, written last by every save. Other files in the directory
(``config.json`` when a resume starts, logs, metrics) never trigger a reload.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable, Hashable
from pathlib import Path

import grpc

from flowrl_deploy.checkpoint import CHECKPOINTS_DIR, DOCUMENT_FILE, LAST, resolve_checkpoint
from flowrl_deploy.errors import FlowRLError, printable
from flowrl_deploy.onnxfile import is_onnx_path
from flowrl_deploy.serve.errors import ServeError

log = logging.getLogger("flowrl.serve")


def requested_path(path: str) -> str:
    """A path a client sent, as messages and logs show it: quoted and escaped (``repr``), cut at 200 characters."""
    return repr(path if len(path) <= 200 else path[:200] + "…")


def reload_root(model: str) -> tuple[Path, str]:
    """Where Reload may load from when ``model`` is served: beside the served file (its own folder,
    even if it is a link), the run of a served checkpoint (so a later checkpoint of it), or a served
    run directory itself."""
    served = Path(model)
    if is_onnx_path(served):
        return served.absolute().parent.resolve(), "the served file's directory"
    checkpoint = resolve_checkpoint(served).resolve()  # checkpoints/last, or model.safetensors → step_…
    if served.is_file() or served.resolve() == checkpoint:
        return checkpoint.parent, "the served checkpoint's run"
    return served.resolve(), "the served run directory"


def reload_target(model: str, path: str) -> Path:
    """What Reload of ``path`` would load while ``model`` is served, resolved once, checked to lie
    in :func:`reload_root` (before and after following links such as a checkpoint directory's
    ``last``): Reload must not become a way to make the server read any file it can reach. A
    relative ``path`` is looked up in that root and, for a run's ``checkpoints/`` folder, in the
    run above it (``step_…`` and ``checkpoints/step_…`` both name a checkpoint), never in the
    server's working directory, which its clients cannot know. A refusal names the path as sent
    (a relative one also as found in the root), never where a link leads: that is its ``detail``,
    for the server's log alone."""
    allowed, what = reload_root(model)
    shown = requested_path(path)
    if "\0" in path:
        raise ServeError(f"reload refused: {shown} contains a NUL byte", grpc.StatusCode.INVALID_ARGUMENT)
    starts = [allowed, allowed.parent] if allowed.name == CHECKPOINTS_DIR else [allowed]
    candidates = [Path(path)] if Path(path).is_absolute() else [start / path for start in starts]

    def named(candidate: Path) -> str:
        return shown if candidate == Path(path) else f"{shown} ({candidate})"

    def check(given: Path, reached: Path) -> Path:
        """``reached`` resolved, spelt below ``allowed``; ``given`` refused when what it leads to,
        ``reached``, lies outside ``allowed``: the client is told of ``given``, and only the log of
        where it leads (outside what the caller may load)."""
        resolved = reached.resolve()
        inside = resolved if resolved.is_relative_to(allowed) else _respelt_below(resolved, allowed)
        if inside is None:
            raise ServeError(
                f"reload refused: {named(given)} is outside {allowed}, {what}; put the new model there",
                grpc.StatusCode.PERMISSION_DENIED,
                detail="" if resolved == given else f"it leads to {resolved}",
            )
        return inside

    try:
        given = next((c for c in candidates if c.exists()), candidates[0])
        check(given, given)
        given.stat()  # a missing file, or one no path can reach: a link loop, a name too long
        for link in (given / LAST, given / CHECKPOINTS_DIR / LAST):  # what resolve_checkpoint follows,
            if link.is_symlink():  # checked first: its error for a dangling link says where the link leads
                check(given, link)
        target = given.resolve() if is_onnx_path(given) else resolve_checkpoint(given).resolve()
        target = check(given, target)  # here too: a link swapped for a file meanwhile makes resolve() raise EINVAL
    except FileNotFoundError:
        raise FlowRLError(f"model not found: {named(given)}") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: Path.resolve's link loop before Python 3.13
        loop = isinstance(exc, RuntimeError) or exc.errno == errno.ELOOP
        why = "a symbolic link loop" if loop else exc.strerror or str(exc)
        raise ServeError(
            f"reload refused: {shown} is no usable path ({why})", grpc.StatusCode.INVALID_ARGUMENT
        ) from None
    return target


def _respelt_below(resolved: Path, allowed: Path) -> Path | None:
    """``resolved`` (a path without links) spelt below ``allowed`` when it names the same file as
    that spelling, or None. On a case-insensitive file system (macOS APFS) ``Path.resolve`` keeps
    the caller's case, so ``/Users/a/Runs/p.onnx`` is not relative to ``/Users/a/runs`` yet is a
    file in it. The folder of ``resolved`` as deep as ``allowed`` must be ``allowed`` itself
    (:func:`os.path.samefile`), and the respelt path must resolve below ``allowed`` and be the same
    file: what is loaded is then named below ``allowed``, as a plainly admitted path is."""
    depth = len(allowed.parts)
    if len(resolved.parts) < depth:
        return None
    respelt = allowed.joinpath(*resolved.parts[depth:])
    try:
        if not os.path.samefile(Path(*resolved.parts[:depth]), allowed):
            return None
        inside = respelt.resolve()
        return inside if inside.is_relative_to(allowed) and os.path.samefile(inside, resolved) else None
    except (OSError, RuntimeError):  # missing, or a link loop: not shown to lie inside
        return None


def _file_stamp(path: Path) -> tuple[int, int, int, int] | None:
    """Inode, modification and change times, size: the change time (ctime) moves with every write
    and can be set by no one, so a copy whose mtime is put back (``cp new p && touch -r old p``) is seen."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size


def served_stamp(model: Path) -> Hashable | None:
    """What changes when ``model`` would load as another model; None while it cannot be read.

    An ONNX file: the file itself. Anything else is a checkpoint: the directory it resolves to
    and the stamp of its ``checkpoint.json``.
    """
    if is_onnx_path(model):
        return _file_stamp(model)
    try:
        checkpoint = resolve_checkpoint(model)
    except (FlowRLError, OSError):  # e.g. 'last' swapped mid-poll: look again next time
        return None
    document = _file_stamp(checkpoint / DOCUMENT_FILE)
    return None if document is None else (str(checkpoint), document)


class FileWatcher:
    """Poll what ``path`` serves (:func:`served_stamp`); once a change has settled for one
    interval, call ``reload()``.

    The stamp of the served model is taken when the watcher is built: build it before the first
    load, so that a checkpoint saved during that load is not missed. A failed reload is logged
    (and counted by ``reload()``), naming the version still served (``serving()``, when given), and
    the old model keeps serving; the next change tries again.
    What cannot be read for a whole interval (removed, not replaced) is warned about once, and
    its return logged.
    """

    def __init__(
        self,
        path: Path,
        reload: Callable[[], object],
        interval_s: float = 1.0,
        serving: Callable[[], str] | None = None,
    ) -> None:
        self._path = path
        self._reload = reload
        self._serving = serving
        self._interval = interval_s
        self._served = served_stamp(path)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="flowrl-watch", daemon=True)

    def start(self) -> FileWatcher:
        self._thread.start()
        return self

    def stop(self, timeout_s: float) -> bool:
        """Stop polling; wait up to ``timeout_s`` for a reload in progress. False: it is still in
        progress, left to finish on its own (the thread is a daemon; the model it swaps in is served
        by no one once the server has stopped)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        served = self._served
        seen = served
        missing = False
        while not self._stop.wait(self._interval):
            now = served_stamp(self._path)
            if now is None and seen is None and not missing:  # not a file being replaced (rm, then cp)
                missing = True
                log.warning("%s (--watch) cannot be read (removed?); the loaded model keeps serving", self._path)
            elif now is not None and missing:
                missing = False
                log.info("%s (--watch) can be read again", self._path)
            if now is None or now == served:
                seen = now
                continue
            if now != seen:  # still being written: wait for it to settle
                seen = now
                continue
            served = now
            try:
                self._reload()
            except Exception as exc:  # keep serving the old model; this file is tried again once it changes
                version = "the old model" if self._serving is None else self._serving()
                log.warning(  # escaped: a file anyone could drop there chooses the message (an output's name)
                    "reload of %s (--watch) refused, still serving %s: %s", self._path, version, printable(exc)
                )
