"""A server without a writable temporary directory (a read-only root file system with no emptyDir on
/tmp, as a hardened Kubernetes pod has): an .onnx file is served, and only a checkpoint, which is
exported into a work folder, is refused, in one line naming the way out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_policy import write_policy

SCRIPT = """
import shutil, sys
from pathlib import Path
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve import PolicyServer, ServeConfig

onnx, checkpoint = sys.argv[1:]
with PolicyServer(ServeConfig(onnx, port=0, grace_s=0)).start() as server:
    print("served", server.servicer.model.version)

def export(source, out, steps):
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(onnx, out))

try:
    PolicyServer(ServeConfig(checkpoint, port=0, grace_s=0), export_checkpoint=export).start()
except FlowRLError as exc:
    print("refused", exc)
"""


def _without_tmp(tmp_path: Path) -> dict[str, str]:
    """The environment of a process whose TMPDIR does not exist; /tmp and the rest of tempfile's
    fallbacks stay writable here, so the test also gets a TMPDIR tempfile cannot fall back from."""
    return {**os.environ, "TMPDIR": str(tmp_path / "missing"), "OMP_NUM_THREADS": "1"}


def test_an_onnx_file_is_served_and_a_checkpoint_refused_in_one_line_without_a_temporary_directory(tmp_path):
    onnx = write_policy(tmp_path / "policy.onnx")
    checkpoint = tmp_path / "run"
    checkpoint.mkdir()
    env = _without_tmp(tmp_path)
    # tempfile falls back to /tmp when TMPDIR is unusable: patch its candidates to TMPDIR alone, as on a
    # read-only root file system where every fallback is unwritable too
    script = "import tempfile; tempfile._candidate_tempdir_list = lambda: [tempfile._os.environ['TMPDIR']]\n" + SCRIPT
    result = subprocess.run(
        [sys.executable, "-c", script, str(onnx), str(checkpoint)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("served v1-"), result.stdout
    assert lines[1].startswith("refused serving a checkpoint exports it"), result.stdout
    assert "TMPDIR" in lines[1] and "emptyDir" in lines[1] and ".onnx" in lines[1]
    assert len(lines) == 2


def test_a_checkpoint_exported_on_the_fly_uses_a_work_folder_it_removes_on_stop(tmp_path):
    import shutil

    from flowrl_deploy.serve import PolicyServer, ServeConfig

    onnx = write_policy(tmp_path / "policy.onnx")
    checkpoint = tmp_path / "run"
    checkpoint.mkdir()
    exported: list[Path] = []

    def export(source: Path, out: Path, steps: int | None) -> Path:
        out.parent.mkdir(parents=True, exist_ok=True)
        exported.append(Path(shutil.copy(onnx, out)))
        return exported[-1]

    server = PolicyServer(ServeConfig(str(checkpoint), port=0, grace_s=0), export_checkpoint=export)
    assert server.servicer.slot.work_folder is None  # nothing made until a checkpoint is exported
    with server.start():
        assert server.servicer.model is not None
        folder = server.servicer.slot.work_folder
        assert folder is not None and exported[0].is_relative_to(folder) and not exported[0].exists()
        assert folder.name.startswith("flowrl-serve-")
    assert not folder.exists()


def test_every_export_of_a_server_goes_into_its_one_work_folder(tmp_path, monkeypatch):
    """Each export (the start, then each reload of a checkpoint) made a new folder, and only the last
    was removed: each reload left one, holding its .onnx."""
    import tempfile

    from flowrl_deploy.serve import PolicyServer, ServeConfig

    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    checkpoint = tmp_path / "run"
    checkpoint.mkdir()
    exported: list[Path] = []

    def export(source: Path, out: Path, steps: int | None) -> Path:
        out.parent.mkdir(parents=True, exist_ok=True)
        exported.append(write_policy(out, scale=len(exported) + 1.0))  # a new model each time
        return exported[-1]

    with PolicyServer(ServeConfig(str(checkpoint), port=0, grace_s=0), export_checkpoint=export).start() as server:
        server.servicer.slot.load()  # a Reload of the served checkpoint, as --watch makes
        folder = server.servicer.slot.work_folder
        assert folder is not None and [path.relative_to(folder).parts for path in exported] == [
            ("gen1", "policy.onnx"),
            ("gen2", "policy.onnx"),
        ]
        assert [path.name for path in temporary.iterdir()] == [folder.name]
        assert list(folder.iterdir()) == []  # each export removed once loaded: a --watch server filled TMPDIR
    assert list(temporary.iterdir()) == []


def test_an_export_still_running_when_the_stop_returns_leaves_no_work_folder(tmp_path, monkeypatch):
    """A --watch reload's export may outlive the stop (it is left at the stop's bound): it wrote its
    .onnx once done, re-making the work folder the stop had removed, and loaded it into a stopped
    server. Now it is removed with the folder, and the reload fails saying why."""
    import tempfile
    import threading

    from flowrl_deploy.errors import FlowRLError
    from flowrl_deploy.serve import PolicyServer, ServeConfig

    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    checkpoint = tmp_path / "run"
    checkpoint.mkdir()
    exporting, release = threading.Event(), threading.Event()
    exported: list[Path] = []

    def export(source: Path, out: Path, steps: int | None) -> Path:
        if exported:  # the reload's, a long torch export writing its file at the end (write_atomic)
            exporting.set()
            release.wait(30)
        out.parent.mkdir(parents=True, exist_ok=True)
        exported.append(write_policy(out, scale=len(exported) + 1.0))
        return exported[-1]

    server = PolicyServer(ServeConfig(str(checkpoint), port=0, grace_s=0), export_checkpoint=export).start()
    refused: list[str] = []

    def reload() -> None:
        try:
            server.servicer.slot.load()
        except FlowRLError as exc:
            refused.append(str(exc))

    reloading = threading.Thread(target=reload)
    reloading.start()
    try:
        assert exporting.wait(10)
        server.stop()
        assert list(temporary.iterdir()) == []
    finally:
        release.set()
        reloading.join(10)
    assert list(temporary.iterdir()) == []
    assert refused == [f"the server stopped while {checkpoint} was exported: it is not loaded"]
    with pytest.raises(FlowRLError) as stopped:
        server.servicer.slot.load()  # one more: not even begun
    assert str(stopped.value) == f"the server has stopped: {checkpoint} is not exported"
    assert list(temporary.iterdir()) == [] and len(exported) == 2
    assert server.servicer.model.version.startswith("v1-")


def test_flowrl_serve_of_an_onnx_file_starts_with_no_usable_temporary_directory(tmp_path):
    """The CLI, end to end: its banner, with TMPDIR missing (tempfile's fallbacks patched away)."""
    onnx = write_policy(tmp_path / "policy.onnx")
    script = (
        "import tempfile; tempfile._candidate_tempdir_list = lambda: [tempfile._os.environ['TMPDIR']]\n"
        "import sys; from flowrl_deploy.cli import app; sys.argv[0] = 'flowrl'; app()"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, "serve", str(onnx), "--port", "0"],
        env=_without_tmp(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert line.startswith("serving v1-"), stderr
    assert process.returncode == 0, stderr
