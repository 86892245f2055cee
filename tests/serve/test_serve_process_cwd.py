"""ServerProcess's child runs the flowrl-deploy this process imported, not a copy in the working
directory: `python -m` puts the current directory first on sys.path, so `flowrl demo` started inside
another checkout (an old clone, a worktree of another branch) served that checkout's code."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from flowrl_deploy import versions
from flowrl_deploy.serve import process


def test_the_child_server_does_not_import_flowrl_deploy_from_the_working_directory(tmp_path):
    shadow = tmp_path / "flowrl_deploy"
    (shadow / "cli").mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise SystemExit('the shadow copy in the working directory')\n")
    (shadow / "cli" / "__init__.py").write_text("")
    (shadow / "cli" / "__main__.py").write_text("")
    done = subprocess.run(
        [*process.FLOWRL, "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert "shadow" not in done.stderr
    assert done.returncode == 0 and versions.release() in done.stdout


def test_the_child_server_imports_flowrl_deploy_as_this_process_does(tmp_path, monkeypatch):
    """Its import path is this process's: a test run from a clone imports the clone's package (pytest puts
    it on sys.path) while the environment's install points elsewhere, and the child must serve the same."""
    ours = tmp_path / "ours"
    (ours / "flowrl_deploy" / "cli").mkdir(parents=True)
    (ours / "flowrl_deploy" / "__init__.py").write_text("raise SystemExit('the copy on the parent path')\n")
    (ours / "flowrl_deploy" / "cli" / "__init__.py").write_text("")
    started = []

    class Started(Exception):
        pass

    def popen(command, **kwargs):
        started.append(kwargs["env"])
        raise Started

    parent_path = [str(ours), *sys.path]
    monkeypatch.setattr(sys, "path", parent_path)
    monkeypatch.setattr(process.subprocess, "Popen", popen)
    with pytest.raises(Started):
        process.ServerProcess(tmp_path / "policy.onnx")
    monkeypatch.undo()
    [env] = started
    assert json.loads(env[process.PARENT_PATH]) == parent_path
    child = subprocess.run([*process.FLOWRL, "--version"], capture_output=True, text=True, timeout=120, env=env)
    assert "the copy on the parent path" in child.stderr
