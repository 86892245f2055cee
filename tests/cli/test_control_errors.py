"""`flowrl control` mistakes: one clear line and exit status 1, never a traceback or a long hang."""

from __future__ import annotations

import os
import signal
import time

import pytest
from closed_port import closed_address
from typer.testing import CliRunner

from flowrl_deploy.cli import app

runner = CliRunner()
POSIX = pytest.mark.skipif(
    not hasattr(signal, "SIGHUP"), reason="POSIX signals (Windows has no SIGHUP, and no kill of itself)"
)


def test_control_against_no_server_fails_fast_and_says_why():
    start = time.monotonic()
    result = runner.invoke(app, ["control", "--server", closed_address(), "--connect-timeout", "1", "--episodes", "1"])
    assert time.monotonic() - start < 10
    assert result.exit_code == 1
    assert "not SERVING after 1 s" in result.output and "UNAVAILABLE" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-steps", "0"], "--max-steps must be >= 1, got 0"),
        (["--deadline-ms", "-1"], "--deadline-ms must be a finite number > 0, got -1"),
        (["--seed", "-1"], "--seed must lie in [0, 2**32), got -1"),
        (["--seed", str(2**32)], f"--seed must lie in [0, 2**32), got {2**32}"),  # one past the last seed
        (["--hz", "0"], "--hz 0 is out of range: a control rate lies in [0.1, 10000] Hz"),
        (["--hz", "-5"], "--hz -5 is out of range: a control rate lies in [0.1, 10000] Hz"),
        (["--episodes", "0"], "--episodes must be >= 1, got 0"),
        (["--max-misses", "0"], "--max-misses must be an integer >= 1, got 0"),
        (["--fallback", "local"], "--fallback local needs --local-model (the ONNX file the server serves)"),
        (["--fallback", "later"], "--fallback must be hold, zeros or local, got 'later'"),
        (["--connect-timeout", "0"], "--connect-timeout must be a number of seconds in (0, 86400], got 0"),
        (["--hz", "nan"], "must be a finite number"),
        (["--connect-timeout", "nan"], "must be a finite number"),  # it had waited forever
    ],
)
def test_control_mistakes_are_one_line_errors(args, message):
    result = runner.invoke(app, ["control", "--server", closed_address(), *args])
    assert result.exit_code in (1, 2)  # 2: a usage error, found while parsing
    assert message in result.output and "Traceback" not in result.output
    assert "not SERVING" not in result.output  # refused before connecting


LOCAL = ["--fallback", "local", "--local-model"]


@pytest.mark.parametrize(
    ("json_path", "args", "message"),
    [
        ("", [], "is a directory"),
        ("afile/report.json", [], "part of its folder"),
        ("fifo", [], "is not a regular file"),
        ("local.onnx", [*LOCAL, "local.onnx"], "--json {tmp}/local.onnx is also the --local-model file"),
        ("local.onnx", [*LOCAL, "sub/../local.onnx"], "is also the --local-model file"),  # resolved paths
        ("local.onnx", [], "--json {tmp}/local.onnx exists and is not a JSON document: a report may replace"),
        ("afile", [], "exists and is not a JSON document"),
    ],
)
def test_an_unwritable_or_destructive_report_is_refused_before_running(tmp_path, monkeypatch, json_path, args, message):
    """Not after every episode has run (the report was lost then); and never over the robot's
    fallback policy (--json onto --local-model replaced the ONNX file with the report) or any file
    that is not an earlier report."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("keep")
    (tmp_path / "sub").mkdir()
    (tmp_path / "local.onnx").write_bytes(b"\x08\x07onnx graph")
    os.mkfifo(tmp_path / "fifo")
    command = ["control", "--server", closed_address(), *args, "--json", str(tmp_path / json_path)]
    result = runner.invoke(app, command)
    assert result.exit_code == 1
    assert message.format(tmp=tmp_path) in result.output and "Traceback" not in result.output
    assert "not SERVING" not in result.output  # refused before connecting
    assert (tmp_path / "local.onnx").read_bytes() == b"\x08\x07onnx graph"
    assert (tmp_path / "afile").read_text() == "keep"


@pytest.mark.parametrize(
    ("stop", "status", "how"),
    [
        (None, 130, "Ctrl-C"),
        pytest.param(getattr(signal, "SIGTERM", 15), 143, "SIGTERM", marks=POSIX),
        pytest.param(getattr(signal, "SIGHUP", 1), 129, "SIGHUP", marks=POSIX),
    ],
)
def test_a_stop_prints_the_figures_so_far_writes_the_report_and_exits_128_plus_the_signal(
    tmp_path, monkeypatch, stop, status, how
):
    """Ctrl-C kept the report; SIGTERM (`timeout 60 flowrl control --json r.json` in CI) and SIGHUP
    killed the run with no summary and no report (scripting review M3)."""
    import json

    pytest.importorskip("dm_control")
    from fatal_signals import fatal
    from tiny_policy import write_policy

    from flowrl_deploy import session
    from flowrl_deploy.serve import PolicyServer, ServeConfig

    path = write_policy(
        tmp_path / "cartpole.onnx", obs_dim=5, act_dim=1, action_low=(-1.0,), action_high=(1.0,),
        obs_layout=(), action_names=(), env_id="dmc:cartpole-swingup",
    )  # fmt: skip
    act = session.ControlSession.act
    calls = []

    def act_then_stop(self, obs):
        calls.append(1)
        if len(calls) == 6:
            if stop is None:
                raise KeyboardInterrupt
            os.kill(os.getpid(), stop)
        return act(self, obs)

    monkeypatch.setattr(session.ControlSession, "act", act_then_stop)
    out = tmp_path / "control.json"
    args = ["control", "--server", "", "--hz", "500", "--deadline-ms", "2", "--json", str(out)]
    with PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as server, fatal(*filter(None, [stop])):
        args[2] = server.address
        result = runner.invoke(app, args)
    assert result.exit_code == status, result.output
    assert "(5 steps)" in result.output and "Traceback" not in result.output
    assert f"interrupted ({how}): the figures above cover the completed episodes and ticks" in result.output
    report = json.loads(out.read_text())
    assert report["interrupted"] is True and report["steps"] == 5


def test_json_dash_prints_the_report_alone_on_stdout(tmp_path, monkeypatch):
    """`--json -` wrote a file named '-': a pipeline (`| jq .deadline_misses`) had no way to the report."""
    import json

    pytest.importorskip("dm_control")
    from tiny_policy import write_policy

    from flowrl_deploy.serve import PolicyServer, ServeConfig

    path = write_policy(
        tmp_path / "cartpole.onnx", obs_dim=5, act_dim=1, action_low=(-1.0,), action_high=(1.0,),
        obs_layout=(), action_names=(), env_id="dmc:cartpole-swingup",
    )  # fmt: skip
    monkeypatch.chdir(tmp_path)
    with PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as server:
        args = ["control", "--server", server.address, "--max-steps", "5", "--json", "-"]
        result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # nothing else on stdout
    assert report["steps"] == 5 and report["server"] == server.address
    assert "control at 50 Hz" in result.stderr and "(5 steps" in result.stderr
    assert not (tmp_path / "-").exists()


@POSIX
def test_a_stop_while_the_report_is_written_lets_it_finish(tmp_path, monkeypatch):
    """A first SIGTERM (`timeout`'s) landing once the run was over, as its summary and report were written,
    ended it as 'stopped before it finished', exit 143, without the report of a run that had completed."""
    import json

    pytest.importorskip("dm_control")
    from fatal_signals import fatal
    from tiny_policy import write_policy

    from flowrl_deploy.cli import _common as common  # where every command's --json report is written
    from flowrl_deploy.serve import PolicyServer, ServeConfig

    write_report = common.write_report

    def stopped_while_writing(flag, path, report):
        os.kill(os.getpid(), signal.SIGTERM)  # handled at once, in this (main) thread
        write_report(flag, path, report)

    monkeypatch.setattr(common, "write_report", stopped_while_writing)
    path = write_policy(
        tmp_path / "cartpole.onnx", obs_dim=5, act_dim=1, action_low=(-1.0,), action_high=(1.0,),
        obs_layout=(), action_names=(), env_id="dmc:cartpole-swingup",
    )  # fmt: skip
    out = tmp_path / "control.json"
    with PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as server, fatal(signal.SIGTERM):
        args = ["control", "--server", server.address, "--max-steps", "5", "--json", str(out)]
        result = runner.invoke(app, args)
    assert result.exit_code == 143, result.output
    assert "interrupted (SIGTERM): the figures above are those of the whole run" in result.output
    report = json.loads(out.read_text())
    assert report["interrupted"] is False and report["steps"] == 5
