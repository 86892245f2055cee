"""The `--resume` a stopped or refused run prints is shell-quoted: a run folder with a space (`runs/my run`) broke
the command when pasted (`--resume runs/my` and a stray argument)."""

import shlex
import signal

from tiny_training import TINY_FLAGS, signal_at
from typer.testing import CliRunner

from flowrl_deploy.cli import app

runner = CliRunner()


def test_the_resume_hints_are_shell_quoted(monkeypatch, tmp_path):
    out = tmp_path / "my runs" / "cartpole ✓"
    quoted = shlex.quote(str(out))
    with monkeypatch.context() as stopping:
        signal_at(stopping, 150, signal.SIGTERM)
        result = runner.invoke(app, ["train", *TINY_FLAGS, "--steps", "1000", "--out", str(out)])
    assert result.exit_code == 143, result.output
    assert result.output.splitlines()[-1].endswith(f"; continue with --resume {quoted}")
    assert shlex.split(result.output.splitlines()[-1].split("continue with ")[1]) == ["--resume", str(out)]

    again = runner.invoke(app, ["train", *TINY_FLAGS, "--steps", "1000", "--out", str(out)])
    assert again.exit_code == 1
    assert f"continue it with --resume {quoted} or choose another --out" in again.output

    with monkeypatch.context() as stopping:
        signal_at(stopping, 250, signal.SIGINT, signal.SIGINT)
        stopped = runner.invoke(app, ["train", "--resume", str(out), "--no-progress"])
    assert stopped.exit_code == 130, stopped.output
    assert f"; continue with --resume {quoted}\n" in stopped.output
