"""A robot computer's base install (no torch, onnx or dm_control): a command that needs an extra
says in one line which module is missing and what to install, exit status 1, never a traceback.
The absence is simulated by ``sys.modules[name] = None`` in a child process running the CLI; a test
whose message depends on the other extras being there skips where they are not."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from extras_needed import needs_extras
from fake_checkpoints import save_step
from serve_stderr import refusal
from tiny_policy import write_policy

from flowrl_deploy.cli._common import user_errors
from flowrl_deploy.extras import missing_extra_message
from flowrl_deploy.serve import PolicyServer, ServeConfig

WITHOUT = textwrap.dedent(
    """
    import sys

    for name in sys.argv[1].split(","):
        sys.modules[name] = None  # import name -> ModuleNotFoundError, as if it were not installed
    from flowrl_deploy.cli import app

    app(sys.argv[2:], prog_name="flowrl")
    """
)


def run_without(modules: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``flowrl *args`` in a child process where ``modules`` (comma-separated) cannot be imported."""
    return subprocess.run(
        [sys.executable, "-c", WITHOUT, modules, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert refusal(result.stderr).strip() == f"error: {message}"  # `flowrl serve` logs "loading …" first


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    save_step(run, 1)
    return run


def test_control_without_dm_control_names_the_train_extra(tmp_path):
    policy = write_policy(
        tmp_path / "cartpole.onnx", obs_dim=5, act_dim=1, action_low=(-1.0,), action_high=(1.0,), obs_layout=(),
        action_names=(), env_id="dmc:cartpole-swingup",
    )  # fmt: skip
    with PolicyServer(ServeConfig(str(policy), port=0, grace_s=0)).start() as server:
        result = run_without("dm_control", "control", "--server", server.address, "--max-steps", "10")
    assert_one_line_error(
        result,
        'dm_control is not installed, so dmc:cartpole-swingup cannot be made: pip install "flowrl-deploy[train]"',
    )


@needs_extras("export")
def test_serve_of_a_checkpoint_without_onnx_names_the_export_extra(checkpoint_run):
    result = run_without("onnx", "serve", str(checkpoint_run), "--port", "0")
    assert_one_line_error(
        result,
        f"{checkpoint_run} is not an .onnx file; serving a checkpoint exports it first, which needs onnx, not "
        'installed here: pip install "flowrl-deploy[export]", or serve the .onnx file that `flowrl export` writes',
    )


def test_eval_of_a_checkpoint_without_torch_names_the_train_extra(checkpoint_run):
    result = run_without("torch", "eval", str(checkpoint_run), "--episodes", "1")
    assert_one_line_error(result, 'flowrl eval needs torch, which is not installed: pip install "flowrl-deploy[train]"')


def test_export_without_onnx_names_the_export_extra(checkpoint_run, tmp_path):
    result = run_without("onnx", "export", str(checkpoint_run), "--out", str(tmp_path / "policy.onnx"))
    assert_one_line_error(
        result, 'flowrl export needs onnx, which is not installed: pip install "flowrl-deploy[export]"'
    )
    assert not (tmp_path / "policy.onnx").exists()


def test_a_module_of_two_extras_names_the_one_of_the_command():
    """torch is in both [train] and [export]: `flowrl export` needs only the smaller one."""
    torch_missing = ModuleNotFoundError(name="torch.nn")
    assert missing_extra_message(torch_missing, "export").endswith('pip install "flowrl-deploy[export]"')
    assert missing_extra_message(torch_missing, "eval").endswith('pip install "flowrl-deploy[train]"')


def test_a_missing_module_of_no_extra_is_a_bug_and_still_raises():
    @user_errors
    def broken_command() -> None:
        import flowrl_deploy.no_such_module  # noqa: F401

    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        broken_command()


@needs_extras("train", "export")
def test_demo_without_onnx_or_matplotlib_says_so_before_training(tmp_path):
    """It trained for minutes, then stopped at the export (or at the plots) with half a report folder."""
    result = run_without("onnx,matplotlib", "demo", "--out", str(tmp_path / "demo"), "--steps", "300")
    assert_one_line_error(
        result,
        "flowrl demo trains, exports and plots: it needs matplotlib, onnx, not installed here: "
        'pip install "flowrl-deploy[train,export]"',
    )
    assert not (tmp_path / "demo").exists()


def test_eval_on_a_gymnasium_task_without_gymnasium_names_the_train_extra(tmp_path):
    policy = write_policy(tmp_path / "policy.onnx")
    result = run_without("gymnasium", "eval", str(policy), "--env", "Pendulum-v1", "--episodes", "1")
    assert_one_line_error(
        result, 'gymnasium is not installed, so Pendulum-v1 cannot be made: pip install "flowrl-deploy[train]"'
    )


@needs_extras("train", "export")
def test_demo_of_a_dmc_task_does_not_ask_for_gymnasium(tmp_path):
    """gymnasium is needed for gymnasium tasks only: without it the default dmc demo gets past the check
    (stopped here by an impossible --hidden, which is checked next)."""
    result = run_without("gymnasium", "demo", "--out", str(tmp_path / "demo"), "--hidden", "0")
    assert result.returncode == 1 and "gymnasium" not in result.stderr and "--hidden" in result.stderr
