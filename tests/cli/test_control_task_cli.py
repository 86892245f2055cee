"""`flowrl control` on the task it runs: each episode's length and termination in the --json report,
and a warning when --env names another task than the served policy's."""

from __future__ import annotations

import json

import pytest
from tiny_policy import write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.serve import PolicyServer, ServeConfig

runner = CliRunner()
SHORT_RUN = ["--deadline-ms", "10", "--max-steps", "5"]  # at the policy's own 50 Hz


@pytest.fixture(scope="module")
def swingup_server(tmp_path_factory):
    """A server of a policy trained on dmc:cartpole-swingup (obs 5, act 1, as cartpole-balance's)."""
    pytest.importorskip("dm_control")
    path = write_policy(
        tmp_path_factory.mktemp("control") / "policy.onnx", obs_dim=5, act_dim=1, action_low=(-1.0,),
        action_high=(1.0,), obs_layout=(), action_names=(), env_id="dmc:cartpole-swingup",
    )  # fmt: skip
    with PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as running:
        yield running.address


def test_the_json_report_gives_each_episodes_length_and_whether_it_terminated(swingup_server, tmp_path):
    out = tmp_path / "report.json"
    result = runner.invoke(
        app, ["control", "--server", swingup_server, *SHORT_RUN, "--episodes", "2", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["lengths"] == [5, 5] and report["terminated"] == [False, False]  # capped by --max-steps


@pytest.mark.parametrize(
    ("env", "warned"),
    [("dmc:cartpole-balance", True), ("dmc:cartpole-swingup", False), (None, False)],
)
def test_another_task_than_the_served_policys_is_warned_about_once(swingup_server, env, warned):
    """A walk policy run on crawl (same shapes) ran silently: the figures were of another task."""
    args = ["control", "--server", swingup_server, *SHORT_RUN] + (["--env", env] if env else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    # only the task warning: on a loaded machine a deadline miss adds a fallback warning of its own
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: --env")]
    expected = "warning: --env dmc:cartpole-balance is not the task the policy was trained on, dmc:cartpole-swingup"
    assert warnings == ([expected] if warned else [])
    assert f"{env or 'dmc:cartpole-swingup'} at 50 Hz" in result.output
