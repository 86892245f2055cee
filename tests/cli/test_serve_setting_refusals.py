"""`flowrl serve` hands every setting to ServeConfig, which refuses a bad one in one line before
anything starts: a flag left unforwarded took its default silently (and, in-process, served forever)."""

from __future__ import annotations

import pytest
from tiny_policy import write_policy
from typer.testing import CliRunner

import flowrl_deploy.serve
from flowrl_deploy.cli import app

runner = CliRunner()


@pytest.fixture
def never_served(monkeypatch):
    """serve_forever fails the test if reached: a refusal lost would otherwise serve until killed."""

    def serve_forever(*args, **kwargs):
        raise AssertionError("serve_forever reached: the setting was not refused")

    monkeypatch.setattr(flowrl_deploy.serve, "serve_forever", serve_forever)


@pytest.mark.parametrize(
    ("flag", "value", "said"),
    [
        ("--max-connections", "0", "error: --max-connections must be >= 1, got 0\n"),
        ("--rt-priority", "0", "error: --rt-priority must be an integer in 1-99 (a SCHED_FIFO priority), got 0\n"),
    ],
)
def test_a_bad_setting_is_refused_in_one_line_before_anything_starts(tmp_path, never_served, flag, value, said):
    policy = write_policy(tmp_path / "policy.onnx")
    result = runner.invoke(app, ["serve", str(policy), "--port", "0", flag, value])
    assert (result.exit_code, result.output) == (1, said)
