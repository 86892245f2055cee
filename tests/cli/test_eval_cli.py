"""Ctrl-C during `flowrl eval` (and any command that does not handle it itself, e.g. `flowrl export`):
one line saying so, with the episodes completed so far, and exit status 130, never a traceback or
silence (typer's own handling exits 130 without a word). And the warning for an --env of another task."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from fake_checkpoints import save_step
from tiny_policy import write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app

runner = CliRunner()
ENV = "gym:Pendulum-v1"  # 200 steps an episode, no physics engine: fast


@pytest.fixture(scope="module")
def pendulum_policy(tmp_path_factory) -> Path:
    pytest.importorskip("gymnasium")
    return write_policy(
        tmp_path_factory.mktemp("eval") / "pendulum.onnx", obs_dim=3, act_dim=1, action_low=(-2.0,),
        action_high=(2.0,), obs_layout=(), action_names=(), env_id=ENV,
    )  # fmt: skip


def _ctrl_c_after(monkeypatch, actions: int, stop: int | None = None) -> None:
    """Ctrl-C (or the signal ``stop``, sent to this process) once the policy has given ``actions`` actions."""
    from flowrl_deploy.policy import SeededPolicy

    act, calls = SeededPolicy.act, []

    def interrupted_act(self, obs):
        calls.append(1)
        if len(calls) > actions:
            if stop is None:
                raise KeyboardInterrupt
            os.kill(os.getpid(), stop)
        return act(self, obs)

    monkeypatch.setattr(SeededPolicy, "act", interrupted_act)


def test_ctrl_c_during_eval_prints_the_completed_episodes_and_exits_130(pendulum_policy, monkeypatch):
    finished = runner.invoke(app, ["eval", str(pendulum_policy), "--episodes", "2"])
    assert finished.exit_code == 0, finished.output
    two_episodes = finished.output.strip().removeprefix(f"{ENV}: return ")  # "-1234.56 ± 7.89 over 2 episodes (...)"
    _ctrl_c_after(monkeypatch, 2 * 200 + 50)
    result = runner.invoke(app, ["eval", str(pendulum_policy), "--episodes", "1000"])
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines() == [
        f"interrupted (Ctrl-C) after 2 of 1000 episodes on {ENV}: return {two_episodes}"
    ]


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals (Windows has no SIGHUP)")
@pytest.mark.parametrize(("stop", "status"), [("SIGTERM", 143), ("SIGHUP", 129)])
def test_sigterm_and_sighup_during_eval_print_the_completed_episodes_as_ctrl_c_does(
    pendulum_policy, monkeypatch, stop, status
):
    """`timeout 600 flowrl eval …` in CI ended with no output at all, killed (scripting review M3)."""
    from fatal_signals import fatal

    two_episodes = runner.invoke(app, ["eval", str(pendulum_policy), "--episodes", "2"]).output.strip()
    _ctrl_c_after(monkeypatch, 2 * 200 + 50, getattr(signal, stop))
    with fatal(getattr(signal, stop)):
        result = runner.invoke(app, ["eval", str(pendulum_policy), "--episodes", "1000"])
    assert result.exit_code == status, result.output
    assert result.output.strip().splitlines() == [
        f"interrupted ({stop}) after 2 of 1000 episodes on {ENV}: return {two_episodes.removeprefix(f'{ENV}: return ')}"
    ]


def test_ctrl_c_during_the_first_episode_says_none_completed(pendulum_policy, monkeypatch):
    _ctrl_c_after(monkeypatch, 10)
    result = runner.invoke(app, ["eval", str(pendulum_policy), "--episodes", "3"])
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines() == [f"interrupted (Ctrl-C) after 0 of 3 episodes on {ENV}"]


def test_ctrl_c_while_the_task_loads_says_none_completed(pendulum_policy, monkeypatch):
    import flowrl_deploy.train.envs

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(flowrl_deploy.train.envs, "make_env", ctrl_c)
    result = runner.invoke(app, ["eval", str(pendulum_policy), "--episodes", "3"])
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines() == [f"interrupted (Ctrl-C) after 0 of 3 episodes on {ENV}"]


def test_ctrl_c_in_a_command_that_does_not_handle_it_is_one_line(tmp_path, monkeypatch):
    """`flowrl export` (a sweep of several N takes minutes) exited 130 with no output at all."""
    import flowrl_deploy.export

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(flowrl_deploy.export, "export_checkpoint", ctrl_c)
    result = runner.invoke(app, ["export", str(save_step(tmp_path / "run", 1)), "--out", str(tmp_path / "p.onnx")])
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines() == ["interrupted (Ctrl-C): flowrl export stopped before it finished"]


@pytest.mark.parametrize(
    ("env", "warned"), [("dmc:cartpole-balance", True), ("dmc:cartpole-swingup", False), (None, False)]
)
def test_an_env_of_another_task_than_the_policys_is_warned_about_once(tmp_path, env, warned):
    """A walk policy evaluated on crawl (same shapes) printed crawl's return as if it were the policy's."""
    pytest.importorskip("dm_control")
    policy = write_policy(
        tmp_path / "swingup.onnx", obs_dim=5, act_dim=1, action_low=(-1.0,), action_high=(1.0,), obs_layout=(),
        action_names=(), env_id="dmc:cartpole-swingup",
    )  # fmt: skip
    result = runner.invoke(app, ["eval", str(policy), "--episodes", "1", *(["--env", env] if env else [])])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    expected = "warning: --env dmc:cartpole-balance is not the task the policy was trained on, dmc:cartpole-swingup"
    assert warnings == ([expected] if warned else [])
    assert "warning:" not in result.stdout  # a script reading the figures from stdout does not get it
    assert result.output.splitlines()[-1].startswith(f"{env or 'dmc:cartpole-swingup'}: return ")


@pytest.mark.parametrize("env", ["dmc:", "nonsense"])
def test_a_malformed_env_is_refused_without_a_warning_first(pendulum_policy, env):
    """A warning that the malformed --env is 'not the task the policy was trained on' came before the error."""
    result = runner.invoke(app, ["eval", str(pendulum_policy), "--env", env])
    assert result.exit_code == 1, result.output
    [line] = result.output.splitlines()
    assert line.startswith(f"error: cannot parse env id '{env}': name a task as"), line


def test_figures_without_lengths_end_without_a_dangling_separator():
    from flowrl_deploy.cli.eval import _figures
    from flowrl_deploy.train.evaluate import EvalResult

    assert _figures(EvalResult(1.0, 0.0, (1.0,)), "N=1 midpoint") == "1.00 over 1 episode (N=1 midpoint)"


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ("gym:NoSuchTask-v9", "error: "),  # parses, but no such task
        ("gym:MountainCarContinuous-v0", "error: MountainCarContinuous-v0 has obs/act dims 2/1, the policy 3/1"),
    ],
)
def test_an_env_that_cannot_be_run_is_refused_without_a_warning_first(pendulum_policy, env, error):
    """'--env … is not the task the policy was trained on' came before the refusal of an unknown task
    or one of other sizes: warn only about an env that is then run."""
    result = runner.invoke(app, ["eval", str(pendulum_policy), "--env", env, "--episodes", "1"])
    assert result.exit_code == 1, result.output
    assert "warning:" not in result.output, result.output
    assert result.output.splitlines()[-1].startswith(error), result.output


def test_json_reports_each_episode_to_a_file_or_alone_on_stdout(pendulum_policy, tmp_path, monkeypatch):
    """A CI gate on a policy's return parsed the `-1234.56 ± 7.89` line (a cp1252 stdout shows ± as 0xB1)."""
    import json

    monkeypatch.chdir(tmp_path)
    to_file = runner.invoke(app, ["eval", str(pendulum_policy), "--episodes", "2", "--json", "eval.json"])
    assert to_file.exit_code == 0, to_file.output
    report = json.loads((tmp_path / "eval.json").read_text())
    assert to_file.stdout.startswith(f"{ENV}: return {report['mean_return']:.2f} ± {report['std_return']:.2f} over 2")
    assert report["policy"] == str(pendulum_policy) and report["env_id"] == ENV and report["seed"] == 0
    assert len(report["returns"]) == 2 and report["lengths"] == [200, 200] and report["terminated"] == [False] * 2
    assert report["unstable"] == ["", ""] and report["interrupted"] is False

    again = runner.invoke(app, ["eval", str(pendulum_policy), "--episodes", "2", "--json", "eval.json"])
    assert again.exit_code == 0, again.output  # a report replaces an earlier report
    to_stdout = runner.invoke(app, ["eval", str(pendulum_policy), "--episodes", "2", "--json", "-"])
    assert to_stdout.exit_code == 0, to_stdout.output
    assert json.loads(to_stdout.stdout) == report  # alone on stdout; the same seeded episodes
    assert to_stdout.stderr.startswith(f"{ENV}: return ") and not (tmp_path / "-").exists()

    (tmp_path / "notes.json").write_text('{"my": "notes"}')
    refused = runner.invoke(app, ["eval", str(pendulum_policy), "--json", "notes.json"])
    assert refused.exit_code == 1 and "is not a flowrl report" in refused.output
    assert (tmp_path / "notes.json").read_text() == '{"my": "notes"}'


def test_an_interrupted_eval_still_writes_its_json_report(pendulum_policy, tmp_path, monkeypatch):
    import json

    _ctrl_c_after(monkeypatch, 200 + 50)
    args = ["eval", str(pendulum_policy), "--episodes", "1000", "--json", str(tmp_path / "r.json")]
    result = runner.invoke(app, args)
    assert result.exit_code == 130, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["interrupted"] is True and len(report["returns"]) == 1 and report["lengths"] == [200]
