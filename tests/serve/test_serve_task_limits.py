"""Task limits (systemd TasksMax=, a cgroup's pids.max, ulimit -u): each thread is a task, and the
server starts a call thread per call in flight, as calls come. Past the limit, the call that needed
one more thread killed gRPC's serving thread: the process ran on answering nothing, forever, and
systemd never restarted it. A limit that cannot fit the threads ``--workers`` may need now refuses
the start, in one line; a thread refused at run time anyway stops ``flowrl serve`` with exit status 1."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tiny_policy import write_policy

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.serve import threads as threads_module
from flowrl_deploy.serve.interceptors import SPARE_THREADS, STREAM_ACT


def _cgroup(tmp_path: Path, monkeypatch, levels: dict[str, tuple[str, int]]) -> None:
    """A cgroup v2 tree where this process sits in /system.slice/flowrl.service, with ``levels``
    ({relative folder: (pids.max, pids.current)})."""
    root = tmp_path / "cgroup"
    for folder, (most, current) in levels.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "pids.max").write_text(f"{most}\n")
        (root / folder / "pids.current").write_text(f"{current}\n")
    (root / "system.slice" / "flowrl.service").mkdir(parents=True, exist_ok=True)
    proc_cgroup = tmp_path / "proc_cgroup"
    proc_cgroup.write_text("0::/system.slice/flowrl.service\n")
    monkeypatch.setattr(threads_module, "CGROUP_FILE", str(proc_cgroup))
    monkeypatch.setattr(threads_module, "CGROUP_MOUNTS", {"": (str(root),), "pids": ()})
    monkeypatch.setattr(threads_module, "_nproc_limit", lambda: None)


def test_a_tasks_max_below_what_the_workers_may_need_refuses_the_start(tmp_path, monkeypatch):
    _cgroup(tmp_path, monkeypatch, {"system.slice/flowrl.service": ("64", 20)})
    server = PolicyServer(ServeConfig(str(write_policy(tmp_path / "policy.onnx")), port=0, grace_s=0))
    with pytest.raises(FlowRLError) as refused:
        server.start()
    message = str(refused.value)
    assert "\n" not in message
    assert "pids.max (systemd TasksMax=) is 64 at /system.slice/flowrl.service, 20 in use" in message
    assert "only 44 more threads can start" in message
    needed = threads_module.threads_to_come(server.config)
    assert f"may need {needed} more (--workers 128 + {SPARE_THREADS} spare" in message
    assert f"lower --workers to {128 - (needed - 44)} or less" in message
    assert server.servicer.model is None  # refused before the model was loaded


def test_the_limit_of_a_cgroup_above_counts_and_max_is_none(tmp_path, monkeypatch):
    _cgroup(tmp_path, monkeypatch, {"system.slice/flowrl.service": ("max", 20), "system.slice": ("30", 25)})
    with pytest.raises(FlowRLError, match=r"pids.max \(systemd TasksMax=\) is 30 at /system.slice, 25 in use"):
        threads_module.check_task_limits(ServeConfig("policy.onnx", workers=4))
    _cgroup(tmp_path, monkeypatch, {"system.slice/flowrl.service": ("max", 20), "system.slice": ("max", 25)})
    threads_module.check_task_limits(ServeConfig("policy.onnx"))  # no limit: nothing to refuse


def test_a_limit_that_fits_starts_the_server(tmp_path, monkeypatch):
    config = ServeConfig(str(write_policy(tmp_path / "policy.onnx")), port=0, grace_s=0, workers=4)
    room = threads_module.threads_to_come(config)
    _cgroup(tmp_path, monkeypatch, {"system.slice/flowrl.service": (str(room + 1000), 1000)})
    with PolicyServer(config).start() as server:
        assert server.alive()


def test_ulimit_u_counts_the_threads_of_the_users_processes(tmp_path, monkeypatch):
    proc = tmp_path / "proc"
    for name, status in {
        "self": "Uid:\t64000\t64000\t64000\t64000\nCapEff:\t0000000000000000\n",
        "12": "Uid:\t64000\t64000\t64000\t64000\nThreads:\t30\n",
        "13": "Uid:\t1000\t1000\t1000\t1000\nThreads:\t90\n",  # another user's
    }.items():
        (proc / name).mkdir(parents=True)
        (proc / name / "status").write_text(status)
    monkeypatch.setattr(threads_module, "PROC", str(proc))
    monkeypatch.setattr(threads_module, "CGROUP_FILE", str(tmp_path / "none"))
    monkeypatch.setattr(threads_module.os, "getuid", lambda: 64000)
    monkeypatch.setattr(threads_module.resource, "getrlimit", lambda which: (40, 40))
    with pytest.raises(FlowRLError) as refused:
        threads_module.check_task_limits(ServeConfig("policy.onnx", workers=16))
    assert "ulimit -u (RLIMIT_NPROC, systemd LimitNPROC=) is 40, 30 in use: only 10 more threads" in str(refused.value)
    assert "--workers" in str(refused.value)
    (proc / "self" / "status").write_text("CapEff:\t0000000001000000\n")  # CAP_SYS_RESOURCE: not applied
    threads_module.check_task_limits(ServeConfig("policy.onnx", workers=16))


def _stream(channel: grpc.Channel, release: threading.Event) -> grpc.Future:
    """A StreamAct call that holds its handler thread until ``release`` (it sends no request)."""

    def nothing():
        release.wait(60)
        return
        yield

    call = channel.stream_stream(STREAM_ACT, request_serializer=bytes, response_deserializer=bytes)(
        nothing(), timeout=60
    )
    return call


def test_a_call_thread_refused_at_run_time_leaves_grpc_serving(tmp_path, monkeypatch):
    """The refused call waits for a thread already running; gRPC's serving thread lives on."""
    config = ServeConfig(str(write_policy(tmp_path / "policy.onnx")), port=0, grace_s=0, workers=4)
    release = threading.Event()
    with PolicyServer(config).start() as server, grpc.insecure_channel(server.address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        check(health_pb2.HealthCheckRequest(), timeout=10)  # one call thread started, idle now
        start = threading.Thread.start

        def refuse(self):  # as under a task limit reached
            if self.name.startswith("flowrl-rpc"):
                raise RuntimeError("can't start new thread")
            return start(self)

        monkeypatch.setattr(threading.Thread, "start", refuse)
        first = _stream(channel, release)  # takes the idle thread
        try:
            waiting = check.future(health_pb2.HealthCheckRequest(), timeout=30)  # needs a thread more: refused
            for _ in range(600):  # up to 30 s: a loaded machine starts threads late
                if server.failure is not None:
                    break
                threading.Event().wait(0.05)
            assert server.failure is not None and "TasksMax" in server.failure
            assert not server.alive()
            assert server._serving_thread is not None and server._serving_thread.is_alive()
            release.set()  # the stream ends: its thread takes the waiting Check
            assert waiting.result(timeout=20).status == health_pb2.HealthCheckResponse.SERVING
        finally:
            release.set()
            first.cancel()


SCRIPT = """
import sys, threading
start = threading.Thread.start
def refuse(self):  # a task limit reached once two call threads run
    if self.name.startswith("flowrl-rpc") and self.name[-1] not in "01":
        raise RuntimeError("can't start new thread")
    return start(self)
threading.Thread.start = refuse
from flowrl_deploy.cli import app
sys.argv[0] = "flowrl"
app()
"""


def test_flowrl_serve_exits_1_once_a_call_thread_is_refused(tmp_path):
    policy = write_policy(tmp_path / "policy.onnx")
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, "serve", str(policy), "--port", "0", "--workers", "4", "--grace-s", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    release = threading.Event()
    try:
        address = process.stdout.readline().split(" on ")[-1].strip()
        assert address, process.stderr.read()
        with grpc.insecure_channel(address) as channel:
            calls = [_stream(channel, release) for _ in range(3)]  # the third needs a third thread
            assert process.wait(timeout=60) == 1
            for call in calls:
                call.cancel()
    finally:
        release.set()
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = process.stderr.read()
    assert "Traceback" not in stderr and "Exception in thread" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert any("TasksMax" in line for line in errors), stderr
    assert any("exits with status 1" in line for line in errors), stderr
