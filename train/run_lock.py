"""The lock on a run directory (:class:`RunLock`): one ``flowrl train`` writes a run at a time, and a second
one (a double submit, a requeue, a second resume) is refused naming the holder (:func:`in_use`); and
:func:`lock_holder`, who holds a run's lock, asked without taking it."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
import time
from pathlib import Path

from flowrl_deploy.atomic import os_reason
from flowrl_deploy.errors import FlowRLError, printable
from flowrl_deploy.fieldtypes import is_int

try:
    import fcntl
except ImportError:  # Windows: no flock; msvcrt's byte-range lock instead
    fcntl = None  # type: ignore[assignment]
try:
    import msvcrt
except ImportError:  # anything but Windows
    msvcrt = None  # type: ignore[assignment]


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
