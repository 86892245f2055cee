"""One run at a time in a run directory: a second `flowrl train` on the same --out, or a second resume of
the run, is refused while the first holds the folder's lock (two processes both exited 0 and mixed their
checkpoints, metrics and TensorBoard files); the lock dies with its process, and readers ignore it."""

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys

import pytest
from tiny_training import TINY, TINY_FLAGS
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.train import loop, run_lock
from flowrl_deploy.train.config import TrainConfig
from flowrl_deploy.train.loop import train
from flowrl_deploy.train.resume import resume_config
from flowrl_deploy.train.run_lock import RunLock

runner = CliRunner()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(steps=200, out=str(out), **TINY), progress=False)
    return out


def test_a_second_run_on_a_locked_out_is_refused_naming_the_holder_and_touching_nothing(tmp_path):
    out = tmp_path / "run"
    lock = RunLock(out, new_run=True)
    try:
        result = runner.invoke(app, ["train", *TINY_FLAGS, "--steps", "200", "--out", str(out)])
        assert result.exit_code == 1
        assert result.output.startswith(
            f"error: --out {out} is in use by another flowrl train (pid {os.getpid()} on host "
            f"{socket.gethostname()} since "
        )
        assert result.output.endswith("); wait for it to end or choose another --out\n")
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # the holder's folder and lock are left alone
    finally:
        lock.release()
    assert not out.exists() or not any(out.iterdir())  # released: the lock file goes too


def test_a_second_resume_of_a_running_run_is_refused(finished_run):
    lock = RunLock(finished_run, new_run=False)
    try:
        result = runner.invoke(app, ["train", "--resume", str(finished_run), "--steps", "400", "--no-progress"])
        assert result.exit_code == 1
        assert result.output.startswith(f"error: the run {finished_run} is in use by another flowrl train (pid ")
        assert result.output.endswith("); wait for it to end\n")
    finally:
        lock.release()


def test_a_locked_run_is_still_read_by_eval_and_export(finished_run, tmp_path):
    lock = RunLock(finished_run, new_run=False)
    try:
        result = runner.invoke(app, ["eval", str(finished_run), "--episodes", "1"])
        assert result.exit_code == 0, result.output
        result = runner.invoke(app, ["export", str(finished_run), "--out", str(tmp_path / "p.onnx"), "--no-verify"])
        assert result.exit_code == 0, result.output
    finally:
        lock.release()


def test_a_run_holds_the_lock_while_it_runs_and_drops_it_at_the_end(tmp_path):
    out = tmp_path / "run"
    seen = []

    def try_a_second_run():
        with pytest.raises(FlowRLError, match="is in use by another flowrl train"):
            RunLock(out, new_run=True)
        seen.append(True)

    train(TrainConfig(steps=120, out=str(out), **TINY), progress=False, on_start=try_a_second_run)
    assert seen and not (out / RunLock.FILE).exists()
    RunLock(out, new_run=False).release()  # free again


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    """flock dies with its process, SIGKILL included: a requeued job after a kill is never refused."""
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom flowrl_deploy.train.run_lock import RunLock\n"
         f"RunLock(__import__('pathlib').Path({str(out)!r}), new_run=True)\nprint('held', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(FlowRLError, match=rf"pid {holder.pid} on host"):
            RunLock(out, new_run=True)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    assert (out / RunLock.FILE).exists()  # left behind by the kill, but no longer locked
    stale = json.loads((out / RunLock.FILE).read_text())
    (out / RunLock.FILE).write_text(json.dumps({**stale, "host": "a-much-longer-host-name.cluster.example.org"}))
    lock = RunLock(out, new_run=True)
    try:  # the new holder replaces the longer one whole: no trailing bytes for the next refusal to choke on
        assert json.loads((out / RunLock.FILE).read_text())["pid"] == os.getpid()
    finally:
        lock.release()


def test_a_lock_file_replaced_before_flock_is_locked_again_at_its_new_inode(tmp_path, monkeypatch):
    """The holder before us may release (unlink, then close) between our open and our flock: the lock taken is
    then on a removed file, so the lock is taken again on the file in place, and a second run is refused."""
    out = tmp_path / "run"
    out.mkdir()
    real_flock, replaced = run_lock.fcntl.flock, []

    def flock(fd, operation):
        if not replaced:  # the previous holder's release, just before our flock
            replaced.append(True)
            (out / RunLock.FILE).unlink()
            (out / RunLock.FILE).touch()
        real_flock(fd, operation)

    monkeypatch.setattr(run_lock.fcntl, "flock", flock)
    lock = RunLock(out, new_run=True)
    try:
        assert replaced
        with pytest.raises(FlowRLError, match="is in use by another flowrl train"):
            RunLock(out, new_run=True)
    finally:
        lock.release()


def test_a_refused_new_run_removes_the_folders_its_lock_made(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    with pytest.raises(FlowRLError, match="--threads"):
        train(TrainConfig(steps=120, out=str(out), **{**TINY, "threads": 100_000}), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_file_system_without_flock_runs_unlocked_and_says_so(monkeypatch, tmp_path, caplog):
    """An NFS mounted without locks answers flock with ENOLCK: that raised a traceback before the run, then
    ran unlocked without a word, so the user believed a second job on the folder would be refused."""
    import errno

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "flock", no_locks)
    out = tmp_path / "run"
    with caplog.at_level("WARNING", logger="flowrl.train"):
        result = train(TrainConfig(steps=120, out=str(out), **TINY), progress=False)
    assert result.counters.env_steps == 120 and not (out / RunLock.FILE).exists()
    unlocked = (
        f"cannot lock the run directory {out} (No locks available: the file system has no locks): it runs "
        "unlocked, so a second flowrl train on it is not refused"
    )
    assert [r.getMessage() for r in caplog.records if r.name == "flowrl.train"] == [unlocked]

    cli = runner.invoke(app, ["train", *TINY_FLAGS, "--steps", "120", "--out", str(tmp_path / "cli")])
    assert cli.exit_code == 0, cli.output
    assert f"warning: {unlocked.replace(str(out), str(tmp_path / 'cli'))}\n" in cli.output


def test_a_resume_rechecks_for_later_checkpoints_once_it_holds_the_lock(finished_run, tmp_path, monkeypatch):
    """Another run may save a later checkpoint between the resume's first check and its lock: the check is made
    again under the lock, and the resume refused rather than overwriting that checkpoint."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, symlinks=True)
    real_lock = loop.RunLock

    def saved_meanwhile(run_dir, *, new_run):  # the other run's save, just before our lock
        shutil.copytree(run / "checkpoints" / "step_000000200", run / "checkpoints" / "step_000000400")
        return real_lock(run_dir, new_run=new_run)

    monkeypatch.setattr(loop, "RunLock", saved_meanwhile)
    with pytest.raises(
        FlowRLError, match="holds checkpoints after step_000000200 \\(step_000000400\\), which resuming"
    ):
        train(resume_config(run).override(steps=600), resume=run / "checkpoints" / "step_000000200", progress=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best",
        "last",
        "step_000000200",
        "step_000000400",
    ]


def test_a_lock_that_is_a_link_is_refused_and_what_it_leads_to_is_left_alone(tmp_path):
    """Whoever can write the run folder planted `.lock -> ~/.bashrc`: the run truncated and rewrote the target."""
    victim = tmp_path / "victim"
    victim.write_text("IMPORTANT DATA")
    out = tmp_path / "run"
    out.mkdir()
    (out / RunLock.FILE).symlink_to(victim)
    result = runner.invoke(app, ["train", *TINY_FLAGS, "--steps", "120", "--out", str(out)])
    assert result.exit_code == 1
    assert result.output == f"error: {out / RunLock.FILE} is a symbolic link, not the run's lock file; remove it\n"
    assert victim.read_text() == "IMPORTANT DATA"
    (out / RunLock.FILE).unlink()
    (out / RunLock.FILE).symlink_to(tmp_path / "missing")  # dangling: O_CREAT made the file it leads to
    with pytest.raises(FlowRLError, match=r"is a symbolic link, not the run's lock file; remove it$"):
        RunLock(out, new_run=True)
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_lock_that_is_no_regular_file_is_refused_by_name(tmp_path, kind):
    out = tmp_path / "run"
    out.mkdir()
    os.mkfifo(out / RunLock.FILE) if kind == "fifo" else (out / RunLock.FILE).mkdir()
    with pytest.raises(FlowRLError, match=rf"^{re.escape(str(out / RunLock.FILE))} is not a regular file"):
        RunLock(out, new_run=True)
    assert (out / RunLock.FILE).exists()  # not the run's to remove


def test_without_o_nofollow_a_linked_lock_is_still_refused(tmp_path, monkeypatch):
    """Windows has no O_NOFOLLOW: the link is seen before the open."""
    monkeypatch.delattr(os, "O_NOFOLLOW")
    victim = tmp_path / "victim"
    victim.write_text("IMPORTANT DATA")
    out = tmp_path / "run"
    out.mkdir()
    (out / RunLock.FILE).symlink_to(victim)
    with pytest.raises(FlowRLError, match=r"is a symbolic link, not the run's lock file; remove it$"):
        RunLock(out, new_run=True)
    assert victim.read_text() == "IMPORTANT DATA"


def test_without_o_nofollow_a_dangling_linked_lock_makes_nothing_where_it_leads(tmp_path, monkeypatch):
    """The link is looked for before the open: an open through it would make the file it names."""
    monkeypatch.delattr(os, "O_NOFOLLOW")
    out = tmp_path / "run"
    out.mkdir()
    (out / RunLock.FILE).symlink_to(tmp_path / "missing")
    with pytest.raises(FlowRLError, match=r"is a symbolic link, not the run's lock file; remove it$"):
        RunLock(out, new_run=True)
    assert not (tmp_path / "missing").exists()


def _planting_links(monkeypatch, lock, victim, remove):
    """os.open of ``lock`` as where a link to ``victim`` is planted just before it (after the look for a
    link), and, with ``remove``, removed just after it; returns the list of those opens."""
    real_open, opens = os.open, []

    def open_(path, flags, mode=0o777, *, dir_fd=None):
        if os.fspath(path) != str(lock):
            return real_open(path, flags, mode, dir_fd=dir_fd)
        opens.append(path)
        if not lock.is_symlink():
            lock.unlink(missing_ok=True)
            lock.symlink_to(victim)
        try:
            return real_open(path, flags, mode, dir_fd=dir_fd)
        finally:
            if remove:
                lock.unlink()

    monkeypatch.setattr(os, "open", open_)
    return opens


def test_without_o_nofollow_a_link_planted_after_the_look_is_refused(tmp_path, monkeypatch):
    """Windows has no O_NOFOLLOW: a link planted between the look for one and the open is followed by the
    open, which finds the file it leads to in place of the lock, and seen at the next look."""
    monkeypatch.delattr(os, "O_NOFOLLOW")
    victim = tmp_path / "victim"
    victim.write_text("IMPORTANT DATA")
    out = tmp_path / "run"
    out.mkdir()
    _planting_links(monkeypatch, out / RunLock.FILE, victim, remove=False)
    with pytest.raises(FlowRLError, match=r"is a symbolic link, not the run's lock file; remove it$"):
        RunLock(out, new_run=True)
    assert victim.read_text() == "IMPORTANT DATA"


def test_a_lock_file_replaced_at_every_try_is_refused_not_retried_forever(tmp_path, monkeypatch):
    """A link planted before each open and removed after it (no O_NOFOLLOW) replaced the file between
    every open and its lock: the run reopened it at full CPU, forever."""
    monkeypatch.delattr(os, "O_NOFOLLOW")
    victim = tmp_path / "victim"
    victim.write_text("IMPORTANT DATA")
    out = tmp_path / "run"
    out.mkdir()
    opens = _planting_links(monkeypatch, out / RunLock.FILE, victim, remove=True)
    with pytest.raises(FlowRLError) as refused:
        RunLock(out, new_run=True)
    assert str(refused.value) == (
        f"cannot lock the run directory {out}: {out / RunLock.FILE} was replaced between its open and its lock "
        f"at each of {RunLock.TRIES} tries; stop what replaces it, or remove it"
    )
    assert len(opens) == RunLock.TRIES
    assert victim.read_text() == "IMPORTANT DATA"


def test_the_lock_file_is_the_owners_alone(tmp_path):
    """A 0644 lock let any user who could read a stale one flock it, and so refuse the owner's resume for ever."""
    out = tmp_path / "run"
    old = os.umask(0o022)
    try:
        lock = RunLock(out, new_run=True)
        assert stat.S_IMODE(os.stat(out / RunLock.FILE).st_mode) == 0o600
        lock.release()
        (out / RunLock.FILE).write_text("{}")  # a stale lock an older flowrl-deploy made 0644
        os.chmod(out / RunLock.FILE, 0o644)
        lock = RunLock(out, new_run=True)
        assert stat.S_IMODE(os.stat(out / RunLock.FILE).st_mode) == 0o600
        lock.release()
    finally:
        os.umask(old)


@pytest.mark.parametrize(
    ("holder", "shown"),
    [
        (
            {"pid": 1, "host": "\x1b]0;PWNED\x07\x1b[2Jnode7\r\nwarning: fake", "since": "x\u2028y"},
            " (pid 1 on host \\x1b]0;PWNED\\x07\\x1b[2Jnode7\\r\\nwarning: fake since x\\u2028y)",
        ),
        ({"pid": 7, "host": "h" * 300, "since": "s"}, f" (pid 7 on host {'h' * 100}… since s)"),
        ({"pid": float("inf"), "host": "h", "since": "s"}, ""),
        ({"pid": True, "host": "h", "since": "s"}, ""),
        ({"pid": -3, "host": "h", "since": "s"}, ""),
        ({"pid": 0, "host": "h", "since": "s"}, ""),
        ({"pid": 10**30, "host": "h", "since": "s"}, ""),
        ({"pid": 5, "host": ["h"], "since": "s"}, ""),
        ({"pid": 5, "host": "h"}, ""),
        ([1, 2], ""),
    ],
    ids=[
        "control_chars",
        "long",
        "infinity",
        "bool",
        "negative",
        "zero",
        "huge",
        "list_host",
        "no_since",
        "not_object",
    ],
)
def test_what_the_lock_file_says_is_shown_escaped_or_not_at_all(tmp_path, holder, shown):
    """Whoever wrote the lock file chose what the refusal printed: escape sequences drove the terminal and forged
    lines, and `{"pid": Infinity}` raised OverflowError with a traceback."""
    out = tmp_path / "run"
    lock = RunLock(out, new_run=True)
    try:
        (out / RunLock.FILE).write_text(json.dumps(holder))
        result = runner.invoke(app, ["train", *TINY_FLAGS, "--steps", "120", "--out", str(out)])
        assert result.exit_code == 1
        assert result.output == (
            f"error: --out {out} is in use by another flowrl train{shown}; wait for it to end or choose another --out\n"
        )
    finally:
        lock.release()


def test_a_lock_file_nested_deeper_than_json_reads_shows_no_holder(tmp_path):
    """4096 `[` made json.loads raise RecursionError: a traceback instead of the refusal."""
    out = tmp_path / "run"
    lock = RunLock(out, new_run=True)
    try:
        (out / RunLock.FILE).write_text("[" * 4096)
        with pytest.raises(FlowRLError) as refused:
            RunLock(out, new_run=True)
        assert str(refused.value) == (
            f"--out {out} is in use by another flowrl train; wait for it to end or choose another --out"
        )
    finally:
        lock.release()


def test_a_resume_of_a_run_in_its_warm_up_says_it_is_in_use_not_that_it_holds_no_checkpoint(tmp_path):
    """A requeue script's `--resume` while the old job still runs, before its first checkpoint, was told
    'holds no flowrl-deploy checkpoint'; the more useful fact is that another process owns the run."""
    out = tmp_path / "run"
    lock = RunLock(out, new_run=True)
    (out / "checkpoints").mkdir()
    try:
        for resume in (out, out / "checkpoints"):
            result = runner.invoke(app, ["train", "--resume", str(resume), "--steps", "400", "--no-progress"])
            assert result.exit_code == 1
            assert result.output.startswith(
                f"error: the run {out} is in use by another flowrl train (pid {os.getpid()} on host "
            ), result.output
            assert result.output.endswith("); wait for it to end\n")
        with pytest.raises(FlowRLError, match=r"is in use by another flowrl train \(pid "):
            resume_config(out)
    finally:
        lock.release()
    result = runner.invoke(app, ["train", "--resume", str(out), "--steps", "400", "--no-progress"])
    assert result.exit_code == 1 and "holds no flowrl-deploy checkpoint" in result.output  # free: as before
