"""`flowrl serve --rt-priority` and `flowrl control --rt-priority`: SCHED_FIFO for every thread of
the server (once the model is warm) and of the control loop; bad values and refusals are one line."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from closed_port import closed_address
from realtime import needs_scheduler, skip_unless_realtime_permitted, thread_policies
from tiny_policy import write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.client import PolicyClient
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve import ServeConfig, ServerProcess

runner = CliRunner()
PRIORITY = 7


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return write_policy(
        tmp_path_factory.mktemp("rt") / "cartpole.onnx", obs_dim=5, act_dim=1, action_low=(-1.0,),
        action_high=(1.0,), obs_layout=(), action_names=(), env_id="dmc:cartpole-swingup", control_period_s=0.05,
    )  # fmt: skip


def _target(command: str, policy) -> list[str]:
    return [command, str(policy), "--port", "0"] if command == "serve" else [command, "--server", closed_address()]


@pytest.mark.parametrize("command", ["serve", "control"])
@pytest.mark.parametrize("value", ["0", "100", "-1"])
def test_a_priority_outside_1_to_99_is_one_line_before_anything_starts(policy, command, value):
    result = runner.invoke(app, [*_target(command, policy), "--rt-priority", value])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        f"error: --rt-priority must be an integer in 1-99 (a SCHED_FIFO priority), got {value}"
    ]


@pytest.mark.parametrize("command", ["serve", "control"])
@pytest.mark.parametrize("value", ["x", "1.5"])
def test_a_priority_that_is_not_an_integer_is_a_usage_error(policy, command, value):
    result = runner.invoke(app, [*_target(command, policy), "--rt-priority", value])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--rt-priority'" in result.output and "Traceback" not in result.output


def test_the_library_config_checks_the_priority_as_the_flag_does():
    assert ServeConfig("policy.onnx").rt_priority is None
    assert ServeConfig("policy.onnx", rt_priority=np.int64(50)).rt_priority == 50
    with pytest.raises(FlowRLError, match=r"^--rt-priority must be an integer in 1-99 .*, got 100$"):
        ServeConfig("policy.onnx", rt_priority=100)
    with pytest.raises(FlowRLError, match=r"^--rt-priority must be an integer or None, got True$"):
        ServeConfig("policy.onnx", rt_priority=True)


def _refuse_real_time(monkeypatch) -> None:
    def refuse(thread_id, policy, param):
        if policy == os.SCHED_FIFO:
            raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)


REFUSED = (
    "error: --rt-priority 50: this process may not use real-time scheduling (Operation not permitted); "
    "run it as root, with CAP_SYS_NICE or under an rtprio limit of at least 50 (ulimit -r), or leave --rt-priority out"
)


@needs_scheduler
def test_serve_without_the_right_refuses_in_one_line_before_loading_the_model(policy, monkeypatch):
    from flowrl_deploy.serve.server import PolicyServer

    _refuse_real_time(monkeypatch)
    monkeypatch.setattr(PolicyServer, "start", lambda self: pytest.fail("the model was loaded"))
    result = runner.invoke(app, ["serve", str(policy), "--port", "0", "--rt-priority", "50"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [REFUSED]


@needs_scheduler
def test_control_without_the_right_refuses_in_one_line_before_connecting(monkeypatch):
    _refuse_real_time(monkeypatch)
    result = runner.invoke(app, ["control", "--server", closed_address(), "--rt-priority", "50"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [REFUSED]


@pytest.fixture(scope="module")
def rt_server(policy):
    """`flowrl serve --rt-priority 7 --threads 2` (onnxruntime's intra-op pool has a thread of its own)."""
    if not hasattr(os, "sched_setscheduler"):
        pytest.skip("scheduling policies are Linux-only")
    skip_unless_realtime_permitted()
    with ServerProcess(policy, "--rt-priority", str(PRIORITY), "--threads", "2", "--providers", "cpu") as process:
        yield process


def test_every_thread_of_the_served_process_runs_real_time(rt_server):
    with PolicyClient(rt_server.address) as client:
        client.act(np.zeros(5, np.float32))  # every thread the server needs has started by now
    policies = thread_policies(rt_server.process.pid)
    assert len(policies) > 3  # gRPC's pollers and handlers, onnxruntime's pool: not the main thread alone
    assert set(policies.values()) == {(os.SCHED_FIFO, PRIORITY)}


CONTROL = """
import json, os, sys, threading
import flowrl_deploy.train.control as control
episode = control._control_episode

def control_episode(*args, **kwargs):  # the CLI's own episode; then each live thread's policy, the session open
    steps = episode(*args, **kwargs)
    tasks = [int(t) for t in os.listdir("/proc/self/task")]
    names = {t.native_id: t.name for t in threading.enumerate()}  # gRPC's C threads have none
    policies = [[os.sched_getscheduler(t), os.sched_getparam(t).sched_priority, names.get(t, "")] for t in tasks]
    print("threads", json.dumps(policies))
    return steps

control._control_episode = control_episode
from flowrl_deploy.cli import app
app(sys.argv[1:], prog_name="flowrl")
"""


def test_every_thread_of_the_control_loop_runs_real_time(rt_server):
    pytest.importorskip("dm_control")
    args = ["control", "--server", rt_server.address, "--max-steps", "20", "--rt-priority", str(PRIORITY)]
    result = subprocess.run([sys.executable, "-c", CONTROL, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("threads ")]
    threads = json.loads(line.removeprefix("threads "))
    assert len(threads) > 1  # gRPC's threads, started after the flag applied
    assert {(policy, priority) for policy, priority, _ in threads} == {(os.SCHED_FIFO, PRIORITY)}


def test_the_metrics_textfile_writer_alone_runs_at_the_default_scheduling(rt_server, tmp_path):
    pytest.importorskip("dm_control")
    textfile = tmp_path / "robot.prom"
    args = ["control", "--server", rt_server.address, "--max-steps", "20", "--rt-priority", str(PRIORITY)]
    args += ["--metrics-textfile", str(textfile)]
    result = subprocess.run([sys.executable, "-c", CONTROL, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("threads ")]
    threads = json.loads(line.removeprefix("threads "))
    policies = {name or str(i): (policy, priority) for i, (policy, priority, name) in enumerate(threads)}
    assert policies.pop("flowrl-metrics-textfile") == (os.SCHED_OTHER, 0)
    assert set(policies.values()) == {(os.SCHED_FIFO, PRIORITY)}
    assert "flowrl_control_running 0" in textfile.read_text()
