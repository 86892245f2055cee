"""Writing files so that a crash leaves the old version or the new one, never half of either:
a temporary file or directory beside the target, synced, then renamed onto it."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path

from flowrl_deploy.errors import FlowRLError


def os_reason(exc: OSError) -> str:
    """What went wrong, without Python's errno prefix: 'File exists (/runs/x/checkpoints)'."""
    if exc.strerror:
        return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    return str(exc)


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``path`` (and its folder) so that a crash leaves the old file or the new one: a
    temporary file beside it, synced, renamed onto it (a link at ``path`` is replaced, never
    written through). A new file gets the umask's permissions, an overwritten one keeps its own.
    A failure is a :class:`FlowRLError` naming ``path`` and leaves no temporary file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    except (FileExistsError, NotADirectoryError):
        raise FlowRLError(f"cannot write {path}: part of its folder {path.parent} is a file") from None
    except OSError as exc:
        raise FlowRLError(f"cannot write {path}: {os_reason(exc)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if path.is_file():  # an overwrite keeps the file's permissions, as writing into it would
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        else:
            apply_umask(Path(tmp))
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise FlowRLError(f"cannot write {path}: {os_reason(exc)}") from None
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """:func:`write_atomic` of ``text`` (UTF-8)."""
    write_atomic(path, text.encode())


def replace_directory(new: Path, final: Path) -> None:
    """Rename ``new`` to ``final``; an existing ``final`` is removed only once ``new`` is in its place."""
    if not final.exists() or final.is_symlink():
        os.replace(new, final)
        return
    aside = final.with_name(f".{final.name}.old-{os.getpid()}")
    os.replace(final, aside)
    try:
        os.replace(new, final)
    except OSError:
        os.replace(aside, final)
        raise
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    else:  # a regular file stood at the checkpoint's path
        with contextlib.suppress(OSError):
            aside.unlink()


def apply_umask(path: Path) -> None:
    """Give ``path`` the permissions a plain ``open``/``mkdir`` would: 0666 (0777 for a directory)
    less the umask. ``mkstemp``/``mkdtemp`` and safetensors create owner-only files, which a
    server running as another user could not read."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


def _umask() -> int:
    try:  # Linux: read it without the set-and-restore below, which other threads could observe
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


DIRECTORY_FSYNC = os.name != "nt"
"""Whether directories are fsynced (a rename made durable): Windows has no directory fsync (``os.open``
cannot open a directory there; NTFS journals the rename itself)."""


def fsync_tree(path: Path) -> None:
    """Flush every file of a freshly written directory (a checkpoint), then the directory itself."""
    for child in path.iterdir():
        _fsync_file(child)
    fsync_dir(path)


def _fsync_file(path: Path) -> None:
    """fsync ``path`` through a read-only handle, or where that is refused (Windows: FlushFileBuffers
    needs a writable one, EBADF) through a writable one. Only EBADF is retried: after another error (EIO)
    a second fsync may report success with the data lost."""
    try:
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
    with open(path, "r+b") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """fsync the directory ``path`` (its entries: a rename into it), where the system can (:data:`DIRECTORY_FSYNC`)."""
    if not DIRECTORY_FSYNC:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
