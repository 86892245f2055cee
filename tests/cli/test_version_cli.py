"""`flowrl --version`: the release and the libraries a bug report needs."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from flowrl_deploy import versions
from flowrl_deploy.cli import app

runner = CliRunner()


def test_version_prints_the_release_and_the_libraries_and_exits_0():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"flowrl-deploy {versions.release()}\n")
    assert "\npython " in result.output and "\ngrpcio " in result.output


def test_the_app_help_is_kept_and_lists_version():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "FlowRL from training to a robot's control loop" in result.output and "--version" in result.output


def flowrl_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowrl_deploy", *args], capture_output=True, text=True, timeout=60)


def test_python_m_flowrl_deploy_runs_the_command_line():
    """A wrapper running ``python -m flowrl_deploy`` met 'No module named flowrl_deploy.__main__'."""
    ran = flowrl_module("--version")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith(f"flowrl-deploy {versions.release()}\n")
    failed = flowrl_module("inspect", "/nonexistent.onnx")
    assert failed.returncode == 1 and failed.stderr.startswith("error: ") and "Traceback" not in failed.stderr
