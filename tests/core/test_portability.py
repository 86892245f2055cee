"""Beyond Linux: every module imports without POSIX-only modules and signals (Windows has no fcntl, no
SIGUSR1: `flowrl train` crashed at import), a checkpoint is saved where a read-only handle cannot be
fsynced and a directory cannot be opened, and ``last``/``best`` are pointer files where no symlink can
be made, read by every reader of a run directory. Windows is simulated on Linux (the port review's winsim)."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import numpy as np
import pytest

from flowrl_deploy import atomic
from flowrl_deploy import checkpoint as ckpt
from flowrl_deploy.errors import CheckpointError
from flowrl_deploy.spec import PolicySpec

ROOT = Path(__file__).resolve().parents[2]

WINDOWS_IMPORTS = textwrap.dedent(
    """
    import importlib, os, pkgutil, signal, sys, traceback

    # The standard library as Linux has it, imported before the simulation: only this project's modules are under
    # test. Python 3.12's asyncio (which grpc imports) reads os.sysconf at import where sockets have sendmsg, as
    # Linux's do and Windows' do not: removing os.sysconf under Linux's asyncio broke an import Windows never makes.
    import asyncio

    BLOCKED = {"fcntl", "resource", "termios", "tty", "pty", "pwd", "grp"}
    EXTRAS = {"torch", "dm_control", "mujoco", "gymnasium", "onnx", "tensorboard", "matplotlib", "onnxscript"}

    class Blocked:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"no module named {name!r} on Windows", name=name)
            return None

    for name in BLOCKED:
        sys.modules.pop(name, None)
    sys.meta_path.insert(0, Blocked())
    for name in ("SIGUSR1", "SIGUSR2", "SIGHUP", "SIGKILL", "SIGALRM", "SIGPIPE", "SIGCHLD", "SIGQUIT"):
        if hasattr(signal, name):
            delattr(signal, name)
    for name in ("sysconf", "sched_setaffinity", "sched_getaffinity", "O_CLOEXEC", "pread", "fork", "getuid"):
        if hasattr(os, name):
            delattr(os, name)

    failed, missing = [], set()


    def load(name):  # None where the import failed: recorded with where it raised, unless an extra is missing
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] in EXTRAS:
                missing.add(exc.name)  # an optional extra this install lacks, not a platform problem
                return None
            error = exc
        except Exception as exc:
            error = exc
        where = traceback.extract_tb(error.__traceback__)[-1]
        failed.append(f"{name}: {type(error).__name__}: {error} ({where.filename}:{where.lineno})")
        return None


    for package in sys.argv[1:] or ("flowrl_deploy", "flowrl_deploy.cli", "flowrl_deploy.train",
                                    "flowrl_deploy.export", "flowrl_deploy.serve"):
        module = load(package)  # a package that fails is reported with the rest, not as the script's own crash
        found = pkgutil.iter_modules(module.__path__) if module is not None else ()
        for name in [f"{package}.{m.name}" for m in found if m.name != "__main__"]:
            load(name)
    if "flowrl_deploy.train.loop" in sys.modules:
        from flowrl_deploy.train.loop import _StopOnSignal
        stop = _StopOnSignal(True)
        assert signal.SIGINT in stop.SIGNALS and signal.SIGTERM in stop.SIGNALS, stop.SIGNALS
        stop.restore()
    print("\\n".join(failed))
    """
)


def test_every_module_imports_without_posix_only_modules_and_signals():
    """Windows' signal module has no SIGUSR1/SIGUSR2/SIGHUP/SIGKILL and there is no fcntl, resource or
    termios: `from flowrl_deploy.train import train` raised AttributeError at import."""
    result = subprocess.run([sys.executable, "-c", WINDOWS_IMPORTS], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == ""


def test_the_simulated_windows_refuses_posix_only_imports_and_names_them(tmp_path):
    """The simulation itself: a module that imports fcntl, reads a signal or an os function that Windows lacks at
    import, or whose package fails, is named with where it raised; one that imports grpc (and asyncio) passes."""
    probe = tmp_path / "winsim_probe"
    probe.mkdir()
    (probe / "__init__.py").write_text("")
    (probe / "uses_fcntl.py").write_text("import fcntl\n")
    (probe / "uses_sigusr1.py").write_text("import signal\n\nSTOP = signal.SIGUSR1\n")
    (probe / "uses_sysconf.py").write_text("import os\n\nPAGE = os.sysconf('SC_PAGE_SIZE')\n")
    (probe / "uses_grpc.py").write_text("import asyncio\n\nimport grpc\n")
    broken = tmp_path / "winsim_broken"
    broken.mkdir()
    (broken / "__init__.py").write_text("import os\n\nCPUS = os.sched_getaffinity(0)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", WINDOWS_IMPORTS, "winsim_probe", "winsim_broken"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = sorted(result.stdout.strip().splitlines())
    assert [line.split(":")[0] for line in lines] == [
        "winsim_broken",
        "winsim_probe.uses_fcntl",
        "winsim_probe.uses_sigusr1",
        "winsim_probe.uses_sysconf",
    ], result.stdout
    assert "ModuleNotFoundError: no module named 'fcntl' on Windows" in lines[1]
    assert "AttributeError" in lines[2] and "SIGUSR1" in lines[2] and "uses_sigusr1.py:3)" in lines[2]
    assert "sysconf" in lines[3] and "uses_sysconf.py:3)" in lines[3]
    assert "sched_getaffinity" in lines[0] and "__init__.py:3)" in lines[0]


SPEC = PolicySpec(obs_dim=3, act_dim=2, action_low=(-1.0, -1.0), action_high=(1.0, 1.0))


def save(path: Path) -> Path:
    return ckpt.save_checkpoint(path, spec=SPEC, actor={"w": np.zeros(1, np.float32)}, counters={"step": 1})


@pytest.fixture
def windows_files(monkeypatch):
    """Windows' file system as fsync sees it: os.fsync of a read-only handle fails (FlushFileBuffers needs a
    writable one), a directory cannot be opened with os.open, and no directory fsync is made."""
    import fcntl

    real_fsync, real_open = os.fsync, os.open

    def fsync(fd):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
        real_fsync(fd)

    def open_(path, flags, mode=0o777, *, dir_fd=None):
        if os.path.isdir(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(atomic, "DIRECTORY_FSYNC", False)


def test_a_checkpoint_is_saved_where_read_only_handles_and_directories_cannot_be_fsynced(windows_files, tmp_path):
    path = save(tmp_path / "checkpoints" / "step_1")
    save(path)  # and replaced
    assert ckpt.read_document(path)["counters"] == {"step": 1}
    assert "step_1" in [p.name for p in (tmp_path / "checkpoints").iterdir()]  # (Linux's rmtree of the
    # replaced one needs os.open of a directory, which this simulation refuses; Windows' rmtree does not)


def test_an_fsync_error_other_than_ebadf_is_not_retried(monkeypatch, tmp_path):
    """After EIO the kernel may have dropped the unwritten pages and cleared the error: a second fsync
    reports success with the data lost, so only Windows' EBADF (a read-only handle) is retried."""
    path = tmp_path / "file"
    path.write_bytes(b"data")
    calls = []

    def fsync(fd):
        calls.append(fd)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as raised:
        atomic._fsync_file(path)
    assert raised.value.errno == errno.EIO and len(calls) == 1


def test_linux_still_fsyncs_the_checkpoint_directory(monkeypatch, tmp_path):
    """The directories themselves reach os.fsync (counting fsync_dir's calls passed with DIRECTORY_FSYNC off)."""
    synced, real = [], os.fsync

    def fsync(fd):
        status = os.fstat(fd)
        if stat.S_ISDIR(status.st_mode):
            synced.append((status.st_dev, status.st_ino))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = save(tmp_path / "checkpoints" / "step_1")
    folders = [(s.st_dev, s.st_ino) for s in (os.stat(path), os.stat(path.parent))]
    assert synced == folders  # the new checkpoint's folder (before its rename into place), then its parent


@pytest.fixture
def no_symlinks(monkeypatch):
    """A file system that cannot hold symlinks (Linux's vfat or exFAT: EPERM)."""

    def symlink(src, dst, target_is_directory=False, *, dir_fd=None):
        raise OSError(errno.EPERM, "Operation not permitted", str(dst))

    monkeypatch.setattr(os, "symlink", symlink)


def run_with(tmp_path: Path, *steps: int, last: int) -> Path:
    run = tmp_path / "run"
    for step in steps:
        save(run / ckpt.CHECKPOINTS_DIR / f"step_{step:09d}")
    ckpt.link_checkpoint(run / ckpt.CHECKPOINTS_DIR, ckpt.LAST, run / ckpt.CHECKPOINTS_DIR / f"step_{last:09d}")
    return run


def test_links_are_symlinks_where_they_can_be_made(tmp_path):
    run = run_with(tmp_path, 1, last=1)
    assert os.readlink(run / "checkpoints" / "last") == "step_000000001"
    assert ckpt.read_checkpoint_link(run / "checkpoints" / "last") == "step_000000001"
    assert ckpt.read_checkpoint_link(run / "checkpoints" / "best") is None


@pytest.mark.parametrize("why", ["file system", "windows"])
def test_without_symlinks_last_is_a_pointer_file_every_reader_follows(why, tmp_path, monkeypatch, request):
    if why == "file system":
        request.getfixturevalue("no_symlinks")
    else:  # Windows, even with Developer Mode: a directory symlink cannot be replaced by a rename
        monkeypatch.setattr(ckpt, "SYMLINK_LINKS", False)
    run = run_with(tmp_path, 1, 2, last=1)
    last = run / "checkpoints" / "last"
    assert not last.is_symlink() and last.read_text() == "step_000000001\n"
    assert ckpt.read_checkpoint_link(last) == "step_000000001"
    for given in (run, run / "checkpoints", last):
        assert ckpt.resolve_checkpoint(given) == (run / "checkpoints" / "step_000000001").resolve()
    point, behind = ckpt.resume_point(run)  # killed between saving step 2 and moving last
    assert point.name == "step_000000002" and f"{last} points at step_000000001, not at the newest" in behind
    ckpt.link_checkpoint(run / "checkpoints", ckpt.LAST, run / "checkpoints" / "step_000000002")
    assert ckpt.resume_point(run) == ((run / "checkpoints" / "step_000000002").resolve(), None)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last", "step_000000001", "step_000000002"]


def test_a_dangling_or_foreign_pointer_file_is_refused_by_name(no_symlinks, tmp_path):
    run = run_with(tmp_path, 1, last=1)
    last = run / "checkpoints" / "last"
    last.write_text("step_999\n")
    with pytest.raises(CheckpointError, match="points at step_999, which is missing"):
        ckpt.resolve_checkpoint(run)
    for text in ("../../etc", "/etc", "", "a\nb", "x" * 300):
        last.write_text(text)
        with pytest.raises(CheckpointError, match=f"{last} is no checkpoint link"):
            ckpt.resolve_checkpoint(run)


def test_a_pointer_file_replaces_a_symlink_and_back(tmp_path, monkeypatch):
    run = run_with(tmp_path, 1, 2, last=1)
    monkeypatch.setattr(ckpt, "SYMLINK_LINKS", False)
    ckpt.link_checkpoint(run / "checkpoints", ckpt.LAST, run / "checkpoints" / "step_000000002")
    assert not (run / "checkpoints" / "last").is_symlink()
    assert ckpt.resolve_checkpoint(run).name == "step_000000002"
    monkeypatch.setattr(ckpt, "SYMLINK_LINKS", True)
    ckpt.link_checkpoint(run / "checkpoints", ckpt.LAST, run / "checkpoints" / "step_000000001")
    assert os.readlink(run / "checkpoints" / "last") == "step_000000001"


def test_serving_follows_a_pointer_file(no_symlinks, tmp_path):
    from flowrl_deploy.serve import reload as watch
    from flowrl_deploy.serve.errors import ServeError

    run = run_with(tmp_path, 1, 2, last=1)
    stamp = watch.served_stamp(run)
    assert stamp is not None and stamp[0].endswith("step_000000001")
    assert watch.reload_target(str(run), "checkpoints").name == "step_000000001"
    ckpt.link_checkpoint(run / "checkpoints", ckpt.LAST, run / "checkpoints" / "step_000000002")
    assert watch.served_stamp(run) != stamp
    assert watch.reload_target(str(run), str(run)).name == "step_000000002"
    (tmp_path / "elsewhere" / "checkpoints").mkdir(parents=True)
    (tmp_path / "elsewhere" / "checkpoints" / "last").write_text("step_000000001")
    with pytest.raises(ServeError) as refused:
        watch.reload_target(str(run), str(tmp_path / "elsewhere"))
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_a_checkpoint_document_saved_with_a_bom_reads(tmp_path):
    """Notepad saves UTF-8 with a byte-order mark: read_text() in the locale's encoding made it 'not valid JSON'."""
    path = save(tmp_path / "step_1")
    document = path / ckpt.DOCUMENT_FILE
    document.write_bytes(b"\xef\xbb\xbf" + document.read_bytes())
    assert ckpt.read_document(path)["counters"] == {"step": 1}


def test_the_readmes_jetson_command_installs_the_base_dependencies_but_onnxruntime():
    """Jetson: `pip install .` adds PyPI's CPU onnxruntime over NVIDIA's onnxruntime-gpu, so docs/install.md installs
    the package with --no-deps and the other base dependencies by hand: that list must follow pyproject.toml."""
    import re
    import shlex

    try:
        import tomllib
    except ImportError:  # Python 3.10
        pytest.skip("tomllib needs Python 3.11")
    page = (ROOT / "docs" / "install.md").read_text()
    block = re.search(r"<!-- jetson-command -->\n```bash\n(.*?)\n```\n<!-- /jetson-command -->", page, re.S)
    assert block, "docs/install.md's Jetson command is gone"
    first, second = block.group(1).split(" && ")
    assert first == "pip install --no-deps ."
    listed = shlex.split(second)[2:]
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = [re.sub(r"\s*#.*", "", d).strip() for d in base if not d.startswith("onnxruntime")]
    assert listed == wanted
