"""Ctrl-C in the first seconds of a `flowrl` command: while the program itself loads (typer, numpy), and while
a command loads a library that turns the KeyboardInterrupt into an error of its own (mujoco's ImportError:
initialization failed). Each printed a Python traceback (the second ~70 lines, exit status 1); each is one
line and the shell's 130 now, as a Ctrl-C later is."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
import typer
from extras_needed import needs_extras
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.cli._common import user_errors
from flowrl_deploy.errors import FlowRLError, Interrupted

runner = CliRunner()

BEFORE = "interrupted (Ctrl-C) before the command began: nothing was done\n"

# The `flowrl` program as its console script runs it (the entry point pip installs it from), with a Ctrl-C
# landing while it imports `module`: as KeyboardInterrupt itself, or as an extension module's ImportError
# raised from it (as mujoco's does).
PROGRAM = textwrap.dedent(
    """
    import sys
    from importlib.metadata import entry_points

    module, how = sys.argv[1], sys.argv[2]

    class CtrlC:
        def find_spec(self, name, path=None, target=None):
            if name == module:
                if how == "plain":
                    raise KeyboardInterrupt
                raise ImportError("initialization failed") from KeyboardInterrupt()
            return None

    sys.meta_path.insert(0, CtrlC())
    (entry,) = [entry for entry in entry_points(group="console_scripts") if entry.name == "flowrl"]
    sys.argv = ["flowrl", "--version"]
    sys.exit(entry.load()())
    """
)


@pytest.mark.parametrize("how", ["plain", "chained"])
@pytest.mark.parametrize("module", ["typer", "numpy"])
def test_ctrl_c_while_the_program_loads_is_one_line_and_exit_130(module, how):
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, module, how], capture_output=True, text=True, timeout=120, check=False
    )
    assert (done.returncode, done.stderr, done.stdout) == (130, BEFORE, ""), done.stderr


def test_python_m_flowrl_deploy_cli_still_runs_the_program():
    done = subprocess.run(
        [sys.executable, "-m", "flowrl_deploy.cli", "--version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("flowrl-deploy "), done.stdout


def test_the_console_script_runs_the_program():
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, "no-such-module-imported", "plain"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("flowrl-deploy "), done.stdout


@needs_extras("train")
def test_ctrl_c_while_train_loads_mujoco_is_one_line_and_exit_130(monkeypatch, tmp_path):
    """mujoco's import turns a Ctrl-C into `ImportError: initialization failed` (raised from the
    KeyboardInterrupt): a ~70-line traceback and exit status 1."""
    from flowrl_deploy.train import envs

    def interrupted_import(what):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise ImportError("initialization failed") from exc

    monkeypatch.setattr(envs, "_import_suite", interrupted_import)
    result = runner.invoke(app, ["train", "--env", "dmc:cartpole-balance", "--out", str(tmp_path / "run")])
    assert result.exit_code == 130, result.output
    assert result.output == "interrupted (Ctrl-C): flowrl train stopped before it finished\n"


def _command(raised: BaseException):
    """A one-command app whose command raises ``raised`` (through @user_errors, as every command does)."""
    one = typer.Typer()

    @one.command()
    @user_errors
    def work() -> None:
        raise raised

    return one


def _chained(error: BaseException, cause: BaseException, *, context: bool = False) -> BaseException:
    """``error`` raised from ``cause`` (``raise error from cause``), or during its handling (its context)."""
    try:
        try:
            raise cause
        except BaseException as exc:
            if context:
                raise error  # noqa: B904 (the implicit context is what is tested)
            raise error from exc
    except BaseException as exc:
        return exc


@pytest.mark.parametrize(
    ("raised", "status", "how"),
    [
        (lambda: _chained(ImportError("initialization failed"), KeyboardInterrupt()), 130, "Ctrl-C"),
        (lambda: _chained(ImportError("cut short"), KeyboardInterrupt(), context=True), 130, "Ctrl-C"),
        # a library's own error wrapping it (train/envs' MUJOCO_GL message is raised from the ImportError)
        (
            lambda: _chained(
                FlowRLError("dm_control cannot start"),
                _chained(ImportError("initialization failed"), KeyboardInterrupt()),
            ),
            130,
            "Ctrl-C",
        ),
        (lambda: _chained(ImportError("x"), Interrupted(signal.SIGTERM)), 143, "SIGTERM"),
    ],
)
def test_an_error_raised_from_an_interrupt_is_the_interrupt(raised, status, how):
    result = runner.invoke(_command(raised()), [])
    assert result.exit_code == status, (result.output, result.exception)
    assert result.output == f"interrupted ({how}): flowrl work stopped before it finished\n"


def test_an_error_raised_while_a_ctrl_c_is_handled_stays_that_error():
    """A clean-up that fails while a Ctrl-C is handled (a full disk, a bug) printed as a plain interrupt,
    its message lost (diff review 5); only an import cut short by it is the interrupt."""
    raised = _chained(
        FlowRLError("cannot write the report: No space left on device"), KeyboardInterrupt(), context=True
    )
    result = runner.invoke(_command(raised), [])
    assert result.exit_code == 1 and result.output == "error: cannot write the report: No space left on device\n"


def test_an_error_that_hides_its_interrupt_stays_that_error():
    """``raise … from None`` while handling a Ctrl-C says the error, not the interrupt (as Python shows it)."""
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise FlowRLError("the file is bad") from None
    except FlowRLError as exc:
        raised = exc
    result = runner.invoke(_command(raised), [])
    assert result.exit_code == 1 and result.output == "error: the file is bad\n"
