"""Training beyond Linux, simulated: without os.sysconf (Windows) the memory check is skipped rather than
crashing; without fcntl the run directory is locked with msvcrt's byte-range lock, or where there is no
lock at all the run says it runs unlocked; a whole run and its resume work with Windows' file system
(no symlinks, no directory fsync, no fsync of a read-only handle)."""

from __future__ import annotations

import errno
import fcntl
import os

import pytest
from tiny_training import TINY, TINY_FLAGS
from typer.testing import CliRunner

from flowrl_deploy import atomic
from flowrl_deploy import checkpoint as ckpt
from flowrl_deploy.cli import app
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.spec import PolicySpec
from flowrl_deploy.train import loop, resources, run_lock
from flowrl_deploy.train.config import TrainConfig
from flowrl_deploy.train.loop import train
from flowrl_deploy.train.resources import memory_shortfall, physical_memory_bytes
from flowrl_deploy.train.run_lock import RunLock

runner = CliRunner()
SPEC = PolicySpec(obs_dim=3, act_dim=1, action_low=(-2.0,), action_high=(2.0,), hidden=16)


@pytest.mark.parametrize("sysconf", ["missing", "negative"])
def test_without_a_ram_figure_the_memory_check_is_skipped(sysconf, monkeypatch):
    """No os.sysconf (Windows: AttributeError before training) and no other answer; an old macOS answered -1,
    which refused every run."""
    if sysconf == "missing":
        monkeypatch.delattr(os, "sysconf")
    else:
        monkeypatch.setattr(os, "sysconf", lambda name: -1)
    monkeypatch.setattr(resources, "cgroup_memory_limit", lambda: None)  # a container's limit would be checked
    assert physical_memory_bytes() is None
    huge = TrainConfig(env="Pendulum-v1", hidden=16, buffer_size=10**11)
    assert memory_shortfall(SPEC, huge, loop.torch.device("cpu")) is None


@pytest.mark.parametrize(("answers", "ram"), [(True, 12 * 2**30), (False, None)])
def test_windows_ram_comes_from_global_memory_status_ex(answers, ram, monkeypatch):
    """No os.sysconf on Windows: the RAM is kernel32's GlobalMemoryStatusEx (a stub here), or unknown when it fails."""
    import ctypes

    def global_memory_status_ex(status_ref):
        status = status_ref._obj
        assert status.dwLength == ctypes.sizeof(status) == 64  # MEMORYSTATUSEX's size, which Windows checks
        status.ullTotalPhys = 12 * 2**30
        return int(answers)

    kernel32 = type("Kernel32", (), {"GlobalMemoryStatusEx": staticmethod(global_memory_status_ex)})
    monkeypatch.setattr(ctypes, "windll", type("WinDLL", (), {"kernel32": kernel32}), raising=False)
    monkeypatch.delattr(os, "sysconf")
    monkeypatch.setattr(os, "name", "nt")
    try:
        found = physical_memory_bytes()
    finally:
        monkeypatch.undo()  # os.name back before pytest makes a Path
    assert found == ram


def test_the_memory_check_still_refuses_on_linux():
    huge = TrainConfig(env="Pendulum-v1", hidden=16, buffer_size=10**11)
    assert physical_memory_bytes() > 2**20
    assert "GiB of memory for Pendulum-v1" in memory_shortfall(SPEC, huge, loop.torch.device("cpu"))


class FakeMsvcrt:
    """msvcrt.locking as Windows does it, on flock: it locks ``nbytes`` at the handle's position; a non-blocking
    lock held by another handle fails with EACCES, and so does another handle's read of locked bytes (until the
    holder unlocks or closes its handle), and a file with a locked (so open) handle cannot be removed. Install it
    with :meth:`install`."""

    HELD = errno.EACCES
    """What a lock held by another handle fails with."""

    LK_NBLCK, LK_UNLCK = 2, 0

    def __init__(self) -> None:
        self.locked: dict[int, tuple[tuple[int, int], int, int]] = {}  # fd -> (file, first byte, end)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeMsvcrt:
        real_read, real_close = os.read, os.close

        def read(fd: int, n: int) -> bytes:
            start = os.lseek(fd, 0, os.SEEK_CUR)
            for holder, (file, first, end) in self.locked.items():
                if holder != fd and file == _file(fd) and start < end and first < start + n:
                    raise PermissionError(errno.EACCES, "The process cannot access the file: it is locked")
            return real_read(fd, n)

        def close(fd: int) -> None:
            self.locked.pop(fd, None)  # Windows drops a handle's locks when it is closed
            real_close(fd)

        real_unlink = os.unlink

        def unlink(path, *, dir_fd=None) -> None:
            status = os.stat(path, dir_fd=dir_fd)
            if (status.st_dev, status.st_ino) in {file for file, _, _ in self.locked.values()}:
                raise PermissionError(errno.EACCES, "The process cannot access the file: it is being used")
            real_unlink(path, dir_fd=dir_fd)

        monkeypatch.setattr(os, "read", read)
        monkeypatch.setattr(os, "close", close)
        monkeypatch.setattr(os, "unlink", unlink)
        monkeypatch.setattr(run_lock, "fcntl", None)
        monkeypatch.setattr(run_lock, "msvcrt", self)
        return self

    def locking(self, fd: int, mode: int, nbytes: int) -> None:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX | fcntl.LOCK_NB) if mode == self.LK_NBLCK else fcntl.LOCK_UN)
        except BlockingIOError:
            raise OSError(self.HELD, os.strerror(self.HELD)) from None
        start = os.lseek(fd, 0, os.SEEK_CUR)
        if mode == self.LK_NBLCK:
            self.locked[fd] = (_file(fd), start, start + nbytes)
        else:
            self.locked.pop(fd, None)


def _file(fd: int) -> tuple[int, int]:
    status = os.fstat(fd)
    return status.st_dev, status.st_ino


@pytest.mark.parametrize("held", [errno.EACCES, errno.EDEADLK], ids=["EACCES", "EDEADLOCK"])
def test_without_flock_the_run_is_locked_with_msvcrt(monkeypatch, tmp_path, held):
    """A held lock fails LK_NBLCK with EACCES; EDEADLOCK (LK_LOCK's, after its retries) says held too."""
    fake = FakeMsvcrt()
    fake.HELD = held
    fake.install(monkeypatch)
    monkeypatch.delattr(os, "pread")  # none on Windows: the holder is read with lseek and read
    out = tmp_path / "run"
    lock = RunLock(out, new_run=True)  # its lock lies past the holder's JSON, which the refused run reads
    try:
        assert lock.unlocked is None and fake.locked  # held with msvcrt (the fake's), not with flock
        with pytest.raises(FlowRLError, match=rf"--out {out} is in use by another flowrl train \(pid {os.getpid()} on"):
            RunLock(out, new_run=True)
    finally:
        lock.release()
    assert not (out / RunLock.FILE).exists()
    RunLock(out, new_run=True).release()  # free again


def test_without_any_lock_the_run_says_it_runs_unlocked(monkeypatch, tmp_path):
    """Windows without fcntl: RunLock did nothing and said nothing, so a second run on the folder mixed its files."""
    monkeypatch.setattr(run_lock, "fcntl", None)
    monkeypatch.setattr(run_lock, "msvcrt", None)
    out = tmp_path / "cli"
    result = runner.invoke(app, ["train", *TINY_FLAGS, "--steps", "120", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (
        f"warning: cannot lock the run directory {out} (this system has neither flock nor msvcrt locking): it "
        "runs unlocked, so a second flowrl train on it is not refused\n" in result.output
    )


def test_a_run_and_its_resume_work_on_windows_file_systems(monkeypatch, tmp_path):
    real_fsync = os.fsync

    def fsync(fd):  # FlushFileBuffers needs a writable handle
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(atomic, "DIRECTORY_FSYNC", False)
    monkeypatch.setattr(ckpt, "SYMLINK_LINKS", False)
    monkeypatch.delattr(os, "sysconf")
    FakeMsvcrt().install(monkeypatch)
    out = tmp_path / "run"
    train(TrainConfig(steps=200, out=str(out), **{**TINY, "save_every": 0}), progress=False)
    last = out / "checkpoints" / "last"
    assert not last.is_symlink() and last.read_text() == "step_000000200\n"
    result = train(TrainConfig(steps=400, out=str(out), **{**TINY, "save_every": 0}), resume=out, progress=False)
    assert result.counters.env_steps == 400
    assert last.read_text() == "step_000000400\n" and ckpt.resolve_checkpoint(out).name == "step_000000400"
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["best", "last", "step_000000400"] or kept == ["best", "last", "step_000000200", "step_000000400"]
    assert ckpt.resolve_checkpoint(out / "checkpoints" / "best").name in kept


def test_a_run_on_a_drive_without_symlinks_says_it_writes_pointer_files(monkeypatch, tmp_path):
    """Linux on a FAT, exFAT or CIFS drive: last and best silently became pointer files, which an older
    flowrl-deploy (a robot's) cannot read."""

    def symlink(src, dst, target_is_directory=False, *, dir_fd=None):
        raise OSError(errno.EPERM, "Operation not permitted", str(dst))

    monkeypatch.setattr(os, "symlink", symlink)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", *TINY_FLAGS, "--steps", "120", "--out", str(out)])
    assert result.exit_code == 0, result.output
    note = (
        f"warning: {out / 'checkpoints'} cannot hold symbolic links (a FAT, exFAT or CIFS drive?): last and best "
        "are files naming their checkpoint, which an older flowrl-deploy cannot read\n"
    )
    assert result.output.count(note) == 1
    assert (out / "checkpoints" / "last").read_text() == "step_000000120\n"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last", "step_000000120"]
