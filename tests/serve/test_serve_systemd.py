"""``flowrl serve`` under systemd: READY=1 once SERVING (Type=notify), WATCHDOG=1 while it answers
(WatchdogSec=), STOPPING=1 when a stop begins, and log lines with journald's level prefixes when
stderr is the journal. It sent nothing, so that a Type=notify unit waited for READY until killed."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tiny_policy import write_policy

from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.serve.run import _Liveness


def _messages(sock: socket.socket, until, within_s: float = 60) -> list[str]:
    """Datagrams received until ``until(messages)`` holds (or ``within_s`` passes)."""
    messages: list[str] = []
    deadline = time.monotonic() + within_s
    while not until(messages) and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            messages.append(sock.recv(4096).decode())
    return messages


def test_ready_after_serving_watchdog_pings_and_stopping(tmp_path):
    policy = write_policy(tmp_path / "policy.onnx")
    stderr_path = tmp_path / "stderr"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, open(stderr_path, "w") as stderr:
        sock.bind(str(tmp_path / "notify"))
        sock.settimeout(1)
        status = os.fstat(stderr.fileno())
        env = {
            **os.environ,
            "NOTIFY_SOCKET": str(tmp_path / "notify"),
            "WATCHDOG_USEC": "400000",
            "JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}",  # stderr is "the journal"
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "flowrl_deploy.cli", "serve", str(policy), "--port", "0", "--grace-s", "0"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            text=True,
        )
        try:
            ready = _messages(sock, lambda got: any("READY=1" in m for m in got))
            assert ready and ready[-1].startswith("READY=1\nSTATUS=serving v"), ready
            address = ready[-1].rsplit(" on ", 1)[1]
            with grpc.insecure_channel(address) as channel:  # READY=1 comes once health is SERVING
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            pings = _messages(sock, lambda got: got.count("WATCHDOG=1") >= 3)
            assert pings.count("WATCHDOG=1") >= 3, pings
            process.send_signal(signal.SIGTERM)
            stopping = _messages(sock, lambda got: any(m.startswith("STOPPING=1") for m in got))
            assert any(m == "STOPPING=1\nSTATUS=stopping on SIGTERM" for m in stopping), stopping
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    lines = stderr_path.read_text().splitlines()
    assert lines and all(line.startswith(("<6>INFO ", "<4>WARNING ")) for line in lines), lines
    assert any(line.startswith("<6>INFO flowrl.serve: stopping on SIGTERM") for line in lines), lines


def test_no_watchdog_pings_for_another_process(tmp_path):
    """WATCHDOG_PID names the process the watchdog is for (sd_watchdog_enabled(3)); an abstract socket."""
    policy = write_policy(tmp_path / "policy.onnx")
    name = f"flowrl-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(1)
        env = {**os.environ, "NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}
        process = subprocess.Popen(
            [sys.executable, "-m", "flowrl_deploy.cli", "serve", str(policy), "--port", "0", "--grace-s", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        try:
            ready = _messages(sock, lambda got: any("READY=1" in m for m in got))
            assert ready, process.stderr
            time.sleep(1)  # five watchdog periods
            process.send_signal(signal.SIGTERM)
            rest = _messages(sock, lambda got: any(m.startswith("STOPPING=1") for m in got))
            assert "WATCHDOG=1" not in rest, rest
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_the_watchdogs_liveness_check_fails_once_the_server_stops_answering(policy_path):
    """WATCHDOG=1 is sent only while the server answers its own health Check and its serving thread runs."""
    with PolicyServer(ServeConfig(str(policy_path), port=0, grace_s=0)).start() as server:
        liveness = _Liveness(server)
        try:
            assert liveness(5.0)
            dead = threading.Thread(target=lambda: None)
            dead.start()
            dead.join()
            serving, server._serving_thread = server._serving_thread, dead  # gRPC's serving thread died
            assert not liveness(5.0)
            server._serving_thread = serving
            with socket.socket() as silent:  # a port that takes connections and never answers
                silent.bind(("127.0.0.1", 0))
                silent.listen()
                server.port, port = silent.getsockname()[1], server.port
                deaf = _Liveness(server)
                server.port = port
                try:
                    assert not deaf(0.5)
                finally:
                    deaf.close()
        finally:
            liveness.close()


def test_a_refusal_under_journald_is_an_error_entry(tmp_path):
    stderr_path = tmp_path / "stderr"
    with open(stderr_path, "w") as stderr:
        status = os.fstat(stderr.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        result = subprocess.run(
            [sys.executable, "-m", "flowrl_deploy.cli", "serve", str(tmp_path / "nope.onnx"), "--port", "0"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            timeout=120,
        )
    assert result.returncode == 1
    lines = stderr_path.read_text().splitlines()  # "<6>INFO flowrl.serve: loading …" comes first
    assert lines[-1].startswith("<3>error: model not found"), lines
    assert all(re.match(r"<\d>", line) for line in lines), lines
