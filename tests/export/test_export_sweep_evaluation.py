"""A sweep's return says what it was measured on: each --json row records the env, episode count and
seed (the only env id in the file was the contract's, so a cartpole-balance return read as swingup's),
the table says them above the rows, and an --env of another task than the policy's is warned about, as
`flowrl eval` warns."""

from __future__ import annotations

import json

from export_fixtures import actor_tensors
from typer.testing import CliRunner

from flowrl_deploy.checkpoint import save_checkpoint
from flowrl_deploy.cli import app
from flowrl_deploy.spec import PolicySpec

runner = CliRunner()
SWINGUP = PolicySpec(
    obs_dim=5, act_dim=1, action_low=(-1.0,), action_high=(1.0,), hidden=32, env_id="dmc:cartpole-swingup"
)
WARNING = "warning: --env dmc:cartpole-balance is not the task the policy was trained on, dmc:cartpole-swingup"


def sweep(tmp_path, *args: str):
    checkpoint = save_checkpoint(tmp_path / "ck", spec=SWINGUP, actor=actor_tensors(SWINGUP))
    report = tmp_path / "r.json"
    out = ["--out", str(tmp_path / "p.onnx"), "--json", str(report)]
    result = runner.invoke(app, ["export", str(checkpoint), "--steps", "1", "--report", "--seed", "3", *out, *args])
    assert result.exit_code == 0, result.output
    return result, json.loads(report.read_text())


def test_another_tasks_env_is_warned_about_and_recorded_in_each_row(tmp_path):
    result, rows = sweep(tmp_path, "--episodes", "1", "--env", "dmc:cartpole-balance")
    assert WARNING in result.stderr
    assert rows[0]["evaluation"] == {"env_id": "dmc:cartpole-balance", "episodes": 1, "seed": 3}
    assert rows[0]["contract"]["env_id"] == "dmc:cartpole-swingup"  # the policy's task, as before
    assert "return over 1 episode on dmc:cartpole-balance (seed 3)" in result.stdout
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith("1 "))
    assert "±" not in line  # one episode has no spread to show


def test_the_policys_own_env_gets_no_warning_and_is_recorded(tmp_path):
    result, rows = sweep(tmp_path, "--episodes", "2")
    assert "warning" not in result.output
    assert rows[0]["evaluation"] == {"env_id": "dmc:cartpole-swingup", "episodes": 2, "seed": 3}
    assert "return over 2 episodes on dmc:cartpole-swingup (seed 3)" in result.stdout
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith("1 "))
    assert "±" in line


def test_a_latency_only_report_records_no_evaluation_and_warns_not(tmp_path):
    result, rows = sweep(tmp_path, "--env", "dmc:cartpole-balance")
    assert "warning" not in result.output and "return over" not in result.stdout
    assert rows[0]["evaluation"] is None and rows[0]["mean_return"] is None
