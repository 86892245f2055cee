"""`flowrl serve` as a process (ServerProcess: port 0, SIGTERM → exit 0), `flowrl query`, `flowrl control`."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_policy import write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.client import PolicyClient
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.ort import cuda_device_present
from flowrl_deploy.serve import ServeConfig
from flowrl_deploy.serve import process as process_module
from flowrl_deploy.serve.process import ServerProcess

runner = CliRunner()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A `flowrl serve --port 0` process (ServerProcess), its address, and the policy file."""
    path = write_policy(tmp_path_factory.mktemp("cli") / "policy.onnx")
    with ServerProcess(path, "--metrics-port", "0") as process:
        yield process, process.address, path


def test_query_prints_the_action(served):
    _, address, _ = served
    result = runner.invoke(app, ["query", "--server", address, "--obs", "[0.1, 0.2, 0.3]", "--seed", "1"])
    assert result.exit_code == 0, result.output
    reply = json.loads(result.output)
    with PolicyClient(address) as client:
        expected = client.act(np.array([0.1, 0.2, 0.3], np.float32), seed=1)
    np.testing.assert_allclose(reply["action"], expected, atol=1e-6)
    assert reply["model_version"].startswith("v1-")


def test_query_reads_a_batch_from_a_file(served, tmp_path):
    _, address, _ = served
    obs_file = tmp_path / "obs.json"
    obs_file.write_text("[[0, 0, 0], [1, 1, 1]]")
    result = runner.invoke(app, ["query", "--server", address, "--obs-file", str(obs_file)])
    assert result.exit_code == 0, result.output
    assert np.asarray(json.loads(result.output)["action"]).shape == (2, 2)


def test_query_with_a_wrong_pinned_contract_is_refused(served):
    _, address, _ = served
    result = runner.invoke(app, ["query", "--server", address, "--obs", "[0, 0, 0]", "--contract-hash", "0" * 16])
    assert result.exit_code == 1
    assert "FAILED_PRECONDITION" in result.output and "0000000000000000" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--obs", "[1, 2]"], "--obs gives 2 values, the served policy takes 3 (its obs_dim)"),
        (["--obs", "not json"], "cannot read the observation"),
        ([], "exactly one of --obs or --obs-file"),
        (["--obs", "[1, 2, 3]", "--seed", "-1"], "in [0, 2**64)"),
        (["--obs", "[1, 2, 3]", "--timeout", "0"], "--timeout must be a number of seconds in (0, 86400], got 0"),
        (["--obs", "[1, 2, 3]", "--timeout", "1e10"], "--timeout must be a number of seconds in (0, 86400], got 1e+10"),
        (["--obs", "[1e39, 2, 3]"], "NaN, infinite or beyond-float32"),
        (["--obs", "[NaN, 2, 3]"], "NaN, infinite or beyond-float32"),
    ],
)
def test_query_mistakes_are_one_line_errors(served, args, message):
    _, address, _ = served
    result = runner.invoke(app, ["query", "--server", address, *args])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_serve_refuses_a_missing_model(tmp_path):
    result = runner.invoke(app, ["serve", str(tmp_path / "nope.onnx"), "--port", "0"])
    assert result.exit_code == 1
    assert "model not found" in result.output


@pytest.mark.skipif(cuda_device_present(), reason="a GPU is present, so onnxruntime's CUDA provider may start")
def test_serve_refuses_a_provider_that_cannot_start(tmp_path):
    """onnxruntime quietly runs on the CPU when CUDA cannot start; a provider named on the command line must run."""
    path = write_policy(tmp_path / "policy.onnx")
    result = runner.invoke(app, ["serve", str(path), "--port", "0", "--providers", "cuda,cpu"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "could not start CUDAExecutionProvider" in result.output
    with ServerProcess(path, "--providers", "cpu") as process, PolicyClient(process.address) as client:
        assert client.act(np.zeros(3, np.float32)).shape == (2,)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threads", "100000"], "--threads 100000 is more than this machine can run"),
        (["--batch-workers", "100000"], "--batch-workers 100000 is more than this machine can run"),
        (["--session-idle-s", "nan"], "must be a finite number"),
    ],
)
def test_serve_refuses_settings_it_cannot_run(tmp_path, args, message):
    """A typo such as --threads 100000 would start that many threads before failing."""
    path = write_policy(tmp_path / "policy.onnx")
    result = runner.invoke(app, ["serve", str(path), "--port", "0", *args])
    assert result.exit_code in (1, 2) and message in result.output and "Traceback" not in result.output


def test_sigterm_stops_the_server_with_exit_0(served):
    process, address, _ = served
    assert process.version.startswith("v1-")
    with PolicyClient(address) as client:
        assert client.act(np.zeros(3, np.float32)).shape == (2,)
    assert process.stop() == 0  # SIGTERM


def _child_starts_with(monkeypatch, name: str, disposition: str) -> None:
    """ServerProcess's child starts with signal ``name`` set to ``disposition`` (SIG_IGN, SIG_DFL),
    whatever this process inherited. Set in the child itself: a preexec_fn runs between fork and exec,
    where gRPC's fork handlers once aborted the child."""
    setting = f"import runpy, signal; signal.signal(signal.{name}, signal.{disposition}); "
    monkeypatch.setattr(
        process_module,
        "FLOWRL",
        (sys.executable, "-c", setting + "runpy.run_module('flowrl_deploy.cli', run_name='__main__')"),
    )


def test_sighup_stops_the_server_gracefully_like_sigterm(tmp_path, monkeypatch):
    """SIGHUP (a closed terminal or SSH session, kill -HUP) killed the server at once: exit 129, no
    log line, calls in flight cut. The child starts with SIGHUP at its default even when pytest runs
    under nohup, whose ignore it would rightly keep."""
    _child_starts_with(monkeypatch, "SIGHUP", "SIG_DFL")
    log = tmp_path / "serve.log"
    with ServerProcess(write_policy(tmp_path / "policy.onnx"), log=log) as process:
        process.process.send_signal(signal.SIGHUP)
        assert process.process.wait(30) == 0
        process._stderr_drain.join(10)  # the log is complete
    assert "INFO flowrl.serve: stopping on SIGHUP: finishing calls in flight" in log.read_text()


@pytest.mark.parametrize("ignored", ["SIGHUP", "SIGINT"])
def test_a_signal_ignored_at_start_stays_ignored(tmp_path, monkeypatch, ignored):
    """`nohup flowrl serve …` (SIGHUP ignored) or `flowrl serve … &` in a script (SIGINT ignored by
    the shell): the server put its own handler over the SIG_IGN and stopped when the terminal closed,
    or on a Ctrl-C meant for the script."""
    _child_starts_with(monkeypatch, ignored, "SIG_IGN")
    log = tmp_path / "serve.log"
    with ServerProcess(write_policy(tmp_path / "policy.onnx"), log=log) as process:
        process.process.send_signal(getattr(signal, ignored))
        with PolicyClient(process.address) as client:
            assert client.act(np.zeros(3, np.float32)).shape == (2,)
        assert process.stop() == 0  # SIGTERM still stops it
        process._stderr_drain.join(10)  # the log is complete
    # a handled signal, even one not yet acted on, would be the stop's signal (it came first)
    assert "INFO flowrl.serve: stopping on SIGTERM: finishing calls in flight" in log.read_text()


def test_banner_names_the_bound_address_and_flow_steps_and_warns_on_an_open_address(tmp_path):
    path = write_policy(tmp_path / "policy.onnx", flow_steps=4)
    log = tmp_path / "serve.log"
    with ServerProcess(path, "--host", "0.0.0.0", "--metrics-port", "0", log=log) as process:
        port = int(process.address.rsplit(":", 1)[1])
        assert process.banner.startswith(
            f"serving {process.version} (N=4 flow steps) on 0.0.0.0:{port}, metrics on 0.0.0.0:"
        )
        with PolicyClient(process.address) as client:  # the connectable address: 127.0.0.1
            assert client.act(np.zeros(3, np.float32)).shape == (2,)
        assert process.stop() == 0
    warnings = [line for line in log.read_text().splitlines() if "WARNING" in line]
    grpc_warnings = [line for line in warnings if "metrics on" not in line]
    assert len(grpc_warnings) == 1 and f"0.0.0.0:{port}" in grpc_warnings[0] and "--token" in grpc_warnings[0]
    (metrics_warning,) = [line for line in warnings if "metrics on 0.0.0.0:" in line]  # they follow --host
    assert "no token and no TLS" in metrics_warning


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")
def test_serve_cpus_pins_every_thread_of_the_server(tmp_path):
    core = max(os.sched_getaffinity(0))
    path = write_policy(tmp_path / "policy.onnx")
    with ServerProcess(path, "--cpus", str(core)) as process:
        with PolicyClient(process.address) as client:
            client.act(np.zeros(3, np.float32))  # every thread the server needs has started by now
        tasks = Path(f"/proc/{process.process.pid}/task")
        allowed = {(t / "status").read_text().split("Cpus_allowed_list:")[1].split()[0] for t in tasks.iterdir()}
    assert allowed == {str(core)}
    refused = runner.invoke(app, ["serve", str(path), "--port", "0", "--cpus", "9999"])
    assert refused.exit_code == 1 and "no core 9999 on this machine" in refused.output


def test_server_process_reports_why_it_did_not_start(tmp_path):
    with pytest.raises(FlowRLError, match="model not found"):
        ServerProcess(tmp_path / "missing.onnx")


def test_control_drives_a_simulator(tmp_path):
    pytest.importorskip("dm_control")
    from flowrl_deploy.serve import PolicyServer, ServeConfig

    path = write_policy(
        tmp_path / "cartpole.onnx",
        obs_dim=5,
        act_dim=1,
        action_low=(-1.0,),
        action_high=(1.0,),
        obs_layout=(),
        action_names=(),
        env_id="dmc:cartpole-swingup",
    )
    with PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as server:
        out = tmp_path / "control.json"
        result = runner.invoke(
            app,
            [
                "control",
                "--server",
                server.address,
                "--hz",
                "50",
                "--episodes",
                "2",
                "--max-steps",
                "40",
                "--deadline-ms",
                "20",
                "--json",
                str(out),
            ],
        )
    assert result.exit_code == 0, result.output
    assert "dmc:cartpole-swingup at 50 Hz" in result.output
    report = json.loads(out.read_text())
    assert report["steps"] == 80 and len(report["returns"]) == 2
    # a 20 ms deadline can be missed on a loaded machine (over a quarter of the ticks with 8 busy loops on 2
    # cores): every tick is fresh or a deadline miss (never a lost or refused connection), and the server's
    # actions drove the simulator
    assert report["fresh_replies"] + report["deadline_misses"] == 80 and report["fresh_replies"] >= 1
    assert set(report["fallbacks"]) <= {"deadline"}, report["fallbacks"]
    assert len(report["round_trip_us"]) == report["fresh_replies"]
    assert report["round_trip_p50_us"] <= report["round_trip_p99_us"]


def test_a_server_port_out_of_range_is_named_not_wrapped():
    result = runner.invoke(app, ["query", "--server", "localhost:99999", "--obs", "[0, 0, 0]"])
    assert result.exit_code == 1 and "port 99999 is not in 1-65535" in result.output


@pytest.mark.parametrize("given", ["cpu,cuda", "CPUExecutionProvider,tensorrt,cuda"])
def test_serve_refuses_a_provider_listed_after_the_cpu_which_would_never_run(tmp_path, given):
    """onnxruntime gives each node to the first provider listed that runs it, and the CPU runs them all:
    `--providers cpu,cuda` served on the CPU while saying CUDA must start."""
    path = write_policy(tmp_path / "policy.onnx")
    result = runner.invoke(app, ["serve", str(path), "--port", "0", "--providers", given])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "after the CPU would never run" in result.output and "list it first" in result.output


def test_serve_refuses_a_provider_named_twice(tmp_path):
    path = write_policy(tmp_path / "policy.onnx")
    result = runner.invoke(app, ["serve", str(path), "--port", "0", "--providers", "cpu,CPUExecutionProvider"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "CPUExecutionProvider named twice" in result.output


def test_a_serve_config_with_a_provider_after_the_cpu_is_refused_from_python_too():
    with pytest.raises(FlowRLError, match="CUDAExecutionProvider after the CPU would never run"):
        ServeConfig("policy.onnx", providers=("CPUExecutionProvider", "CUDAExecutionProvider"))
