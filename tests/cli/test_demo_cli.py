"""`flowrl demo`: the README's main job, end to end, with a tiny budget."""

import errno
import json
import os
import re
import signal
import time

import pytest
from extras_needed import needs_extras
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve import ServerProcess

pytestmark = pytest.mark.slow


@needs_extras("train", "export")
def test_demo_writes_a_report_folder_and_stops_its_server(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        app,
        ["demo", "--out", str(out), "--steps", "300", "--hidden", "16", "--episodes", "1", "--hz", "1000",
         "--export-steps", "3"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (report,) = out.iterdir()  # one time-stamped report folder per run
    summary = json.loads((report / "summary.json").read_text())
    assert summary["control"]["steps"] == 1000  # one full cartpole episode, closed loop through the server
    assert summary["served_return"] > 0
    assert summary["export"]["contract"]["flow_steps"] == 3
    for name in ("training_curve.png", "latency_histogram.png", "policy.onnx", "server.log"):
        assert (report / name).stat().st_size > 0
    assert "return via the server" in result.output
    assert summary["last_eval_return"] is not None and "last eval return in training (torch)" in result.output


@needs_extras("train", "export")
def test_a_task_without_a_control_period_runs_at_the_default_rate(tmp_path, monkeypatch):
    """A gymnasium task without ``dt`` (contract control period 0) crashed the demo after training
    with a ZeroDivisionError; the loop now runs at run_control's DEFAULT_HZ (patched to 1000 Hz here,
    so that MountainCar's 999-step episode takes a second)."""
    from flowrl_deploy.train import control

    monkeypatch.setattr(control, "DEFAULT_HZ", 1000.0)
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        app,
        ["demo", "--out", str(out), "--env", "MountainCarContinuous-v0", "--steps", "300", "--hidden", "16",
         "--episodes", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (report,) = out.iterdir()
    summary = json.loads((report / "summary.json").read_text())
    assert summary["export"]["contract"]["control_period_s"] == 0
    assert summary["control"]["hz"] == 1000.0 and summary["control"]["contract_hz"] is None
    assert "closed-loop control at 1000 Hz" in result.output


def test_a_run_without_fresh_replies_is_said_so_not_formatted_as_numbers():
    from types import SimpleNamespace

    from flowrl_deploy.cli.demo import _latencies

    none = SimpleNamespace(fresh_replies=0, round_trip_p50_us=None, round_trip_p99_us=None, round_trip_p999_us=None)
    assert _latencies(none) == "no fresh replies (every tick fell back)"
    some = SimpleNamespace(fresh_replies=3, round_trip_p50_us=900.4, round_trip_p99_us=1500.0, round_trip_p999_us=2e3)
    assert _latencies(some) == "900 / 1500 / 2000 µs"


@needs_extras("train", "export")
def test_child_server_is_stopped_on_interrupt(tmp_path):
    from flowrl_deploy.checkpoint import save_checkpoint
    from flowrl_deploy.export import ExportConfig, export_checkpoint
    from flowrl_deploy.spec import PolicySpec
    from flowrl_deploy.train.actor import FlowActor

    spec = PolicySpec(obs_dim=3, act_dim=1, action_low=(-1.0,), action_high=(1.0,), hidden=8, env_id="dmc:x-y")
    actor = {k: v.numpy() for k, v in FlowActor(spec).state_dict().items()}
    checkpoint = save_checkpoint(tmp_path / "ckpt", spec=spec, actor=actor)
    policy = export_checkpoint(checkpoint, tmp_path / "policy.onnx", ExportConfig(steps=2)).path
    with pytest.raises(KeyboardInterrupt), ServerProcess(policy, log=tmp_path / "server.log") as server:
        assert server.address.startswith("127.0.0.1:")
        raise KeyboardInterrupt
    assert server.process.poll() is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--hz", "-1"], "--hz must be 0 (the task's own rate) or lie in [1, 10000], got -1"),
        (["--hz", "0.001"], "--hz must be 0 (the task's own rate) or lie in [1, 10000], got 0.001"),
        (["--hz", "1e6"], "--hz must be 0 (the task's own rate) or lie in [1, 10000], got 1e+06"),
        (["--export-steps", "-1"], "--export-steps must be 0 (the training N) or lie in [1, 1000], got -1"),
        (["--export-steps", "100000"], "--export-steps must be 0 (the training N) or lie in [1, 1000], got 100000"),
        # checked after the extras are: a base install says which extras it lacks instead
        *(
            pytest.param(args, message, marks=needs_extras("train", "export"))
            for args, message in [
                (["--hidden", "0"], "--hidden must be >= 1"),
                (["--seed", "-1"], "--seed must lie in [0, 2**32), got -1"),
                (["--seed", "4294967296"], "--seed must lie in [0, 2**32), got 4294967296"),
                (["--env", "dmc:nope-nope"], "dm_control has no task nope-nope"),
                (
                    ["--env", "cartpole-swingup"],
                    "cannot parse env id 'cartpole-swingup' (did you mean dmc:cartpole-swingup?)",
                ),
                (["--hidden", "10000000"], "--hidden 10000000 needs about"),
            ]
        ),
    ],
)
def test_bad_settings_are_refused_before_a_report_folder_is_made(tmp_path, args, message):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "reports"), *args])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {message}") and result.output.count("\n") == 1, result.output
    assert "--buffer-size" not in result.output  # a flag of `flowrl train`, not of `flowrl demo`
    assert not (tmp_path / "reports").exists()


@needs_extras("train", "export")
def test_out_pointing_at_a_file_is_refused_without_traceback(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    result = CliRunner().invoke(app, ["demo", "--out", str(target), "--steps", "10"])
    assert result.exit_code == 1
    assert "is a file, not a directory" in result.output and "Traceback" not in result.output
    assert target.read_text() == "keep me"


def test_ctrl_c_is_a_message_and_exit_130(tmp_path, monkeypatch):
    import importlib

    demo = importlib.import_module("flowrl_deploy.cli.demo")  # the module, not the command function

    def interrupted(cfg, echo=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_demo", interrupted)
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--steps", "10"])
    assert result.exit_code == 130
    assert "interrupted" in result.output and "Traceback" not in result.output


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals (Windows has no SIGHUP)")
@pytest.mark.parametrize(("stop", "status"), [("SIGTERM", 143), ("SIGHUP", 129)])
def test_sigterm_and_sighup_stop_the_demo_and_its_server_as_ctrl_c_does(tmp_path, monkeypatch, stop, status):
    """`timeout 600 flowrl demo` (or a CI cancel, Popen.terminate()) killed the demo and left its
    `flowrl serve` child running for good, listening (scripting review M1)."""
    import importlib

    from fatal_signals import fatal
    from tiny_policy import write_policy

    demo = importlib.import_module("flowrl_deploy.cli.demo")  # the module, not the command function
    policy = write_policy(tmp_path / "policy.onnx")
    servers = []

    def stopped_while_serving(cfg, echo=None):
        with ServerProcess(policy, log=tmp_path / "server.log") as server:
            servers.append(server)
            os.kill(os.getpid(), getattr(signal, stop))
            time.sleep(30)  # the closed loop: the signal ends it

    monkeypatch.setattr(demo, "run_demo", stopped_while_serving)
    with fatal(getattr(signal, stop)):
        result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--steps", "10"])
    assert result.exit_code == status, result.output
    assert result.output.startswith(f"interrupted ({stop}); the server is stopped") and "Traceback" not in result.output
    assert servers[0].process.poll() is not None


def test_each_demo_run_gets_its_own_report_folder(tmp_path):
    from flowrl_deploy.cli.demo import _new_report_folder

    first, second = _new_report_folder(tmp_path), _new_report_folder(tmp_path)
    assert first != second and first.is_dir() and second.is_dir()
    assert first.parent == second.parent == tmp_path


@needs_extras("train", "export")
def test_a_report_file_that_cannot_be_written_is_one_line_after_the_results_table(tmp_path, monkeypatch):
    """A full disk at summary.json (here: a directory at its path, made once the control loop ended)
    ended the demo in a traceback, with the results table not printed and a 0-byte summary.json."""
    from flowrl_deploy.train import control

    out, real_run_control = tmp_path / "demo", control.run_control

    def then_block_the_summary(*args, **kwargs):
        result = real_run_control(*args, **kwargs)
        (report,) = out.iterdir()
        (report / "summary.json").mkdir()
        return result

    monkeypatch.setattr(control, "run_control", then_block_the_summary)
    result = CliRunner().invoke(
        app, ["demo", "--out", str(out), "--steps", "300", "--hidden", "16", "--episodes", "1", "--hz", "1000"]
    )
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output  # no traceback
    (report,) = out.iterdir()
    table, error = result.output.rstrip("\n").rsplit("\n", 1)
    assert "return via the server (closed loop)" in table  # the results are printed before the files
    assert re.fullmatch(
        rf"error: cannot write {re.escape(str(report))}/summary\.json: Is a directory.*; the results are in the "
        r"table above; not written: summary\.json, training_curve\.png, latency_histogram\.png",
        error,
    ), error
    assert [p.name for p in report.iterdir() if ".tmp-" in p.name] == []


def _full_disk_after(monkeypatch, writes: int) -> None:
    """Every file write_atomic writes after the first ``writes`` fails as on a full disk (ENOSPC)."""
    from flowrl_deploy import atomic

    fsync, done = atomic.os.fsync, []

    def full(fd: int) -> None:
        if len(done) >= writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        done.append(fd)
        fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", full)


def test_a_full_disk_at_summary_json_names_it_and_the_files_not_written_and_leaves_no_cut_off_file(
    tmp_path, monkeypatch
):
    from flowrl_deploy.cli.demo import _write_report_files

    _full_disk_after(monkeypatch, 0)
    with pytest.raises(FlowRLError) as raised:
        _write_report_files(tmp_path, {"env": "dmc:x-y"}, control=None)
    assert str(raised.value) == (
        f"cannot write {tmp_path / 'summary.json'}: No space left on device; the results are in the table above; "
        "not written: summary.json, training_curve.png, latency_histogram.png"
    )
    assert list(tmp_path.iterdir()) == []  # neither a 0-byte summary.json nor a temporary file


@needs_extras("train")  # matplotlib
def test_a_full_disk_at_a_plot_leaves_the_summary_and_no_cut_off_png(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from flowrl_deploy.cli.demo import _write_report_files

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 10, "charts/episode_return": 3.0}\n')
    _full_disk_after(monkeypatch, 1)
    with pytest.raises(
        FlowRLError,
        match=r"training_curve\.png: No space left on device; .*; not written: training_curve\.png, latency",
    ):
        _write_report_files(tmp_path, {"env": "dmc:x-y"}, SimpleNamespace(round_trip_us=[900.0], hz=50.0))
    assert json.loads((tmp_path / "summary.json").read_text()) == {"env": "dmc:x-y"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "summary.json"]


@needs_extras("train")  # matplotlib
def test_a_stdout_that_fails_at_the_results_table_still_leaves_the_report_files(tmp_path, monkeypatch):
    """The table is printed before the files are written: a reader gone at it (`flowrl demo | head`) lost them."""
    import importlib

    demo = importlib.import_module("flowrl_deploy.cli.demo")  # the module: the package's `demo` is the command
    monkeypatch.setattr(demo, "_table", lambda summary, control: "the results table")

    def broken_pipe(text: str) -> None:
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    from types import SimpleNamespace

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 10, "charts/episode_return": 3.0}\n')
    control = SimpleNamespace(round_trip_us=[900.0], hz=50.0)
    with pytest.raises(BrokenPipeError):
        demo._report(tmp_path, {"env": "dmc:x-y"}, control, broken_pipe)
    assert json.loads((tmp_path / "summary.json").read_text()) == {"env": "dmc:x-y"}
    written = {p.name for p in tmp_path.iterdir()}
    assert written == {"run", "summary.json", "training_curve.png", "latency_histogram.png"}
