"""Graceful stop of a real server: calls in flight finish, health turns NOT_SERVING, new calls are refused."""

from __future__ import annotations

import logging
import os
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tiny_policy import ACT_DIM, OBS_DIM, write_policy

from flowrl_deploy.client import PolicyClient, ServiceError
from flowrl_deploy.codec import decode, encode
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.serve import PolicyServer, ServeConfig, serve_forever


def test_stop_finishes_the_call_in_flight_reports_not_serving_and_refuses_new_calls(tmp_path, monkeypatch):
    path = write_policy(tmp_path / "policy.onnx")
    server = PolicyServer(ServeConfig(str(path), port=0, grace_s=30)).start()
    model = server.servicer.model
    original = model.run
    running, release = threading.Event(), threading.Event()

    def held_run(obs: np.ndarray, noise: np.ndarray | None) -> tuple[np.ndarray, int]:
        running.set()
        release.wait(30)  # the call stays in flight until the test has seen the grace period
        return original(obs, noise)

    monkeypatch.setattr(model, "run", held_run)
    client = PolicyClient(server.address, timeout_s=30)  # generous: a loaded CI machine may stall
    watch = health_pb2_grpc.HealthStub(client.channel).Watch(health_pb2.HealthCheckRequest(), timeout=30)
    stopper = threading.Thread(target=server.stop)  # grace None: the configured grace_s
    in_flight: list[np.ndarray | ServiceError] = []

    def act() -> None:
        try:
            in_flight.append(client.act(np.zeros(OBS_DIM, np.float32)))
        except ServiceError as exc:
            in_flight.append(exc)

    caller = threading.Thread(target=act)
    try:
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        caller.start()
        assert running.wait(30)
        stopper.start()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        refused = None
        until = time.monotonic() + 15  # well within the grace period (30 s), which the held call is in
        while refused is None and time.monotonic() < until:  # stop() turns health NOT_SERVING first
            try:
                client.spec(timeout_s=1)
            except ServiceError as exc:
                refused = exc
        # refused, not served: gRPC says UNAVAILABLE (GOAWAY) or CANCELLED (the call met the shutdown)
        assert refused is not None and refused.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert caller.is_alive() and not in_flight  # all of the above happened during the grace period
    finally:
        release.set()
        caller.join(30)
        stopper.join(30)
        client.close()
    assert not stopper.is_alive()
    assert len(in_flight) == 1 and not isinstance(in_flight[0], ServiceError), in_flight
    assert in_flight[0].shape == (ACT_DIM,)


def test_stop_ends_open_streams_once_their_request_in_flight_has_its_reply(tmp_path, monkeypatch):
    """A connected robot's StreamAct kept stop() waiting for the whole grace period (5 s on every
    SIGTERM; with grace_s=inf it never returned): an idle stream now ends at once, and a stream
    with a request in flight ends (status OK) as soon as that request has its reply."""
    path = write_policy(tmp_path / "policy.onnx")
    server = PolicyServer(ServeConfig(str(path), port=0, grace_s=30)).start()
    model = server.servicer.model
    original = model.run
    hold, running, release, closed = threading.Event(), threading.Event(), threading.Event(), threading.Event()

    def held_run(obs: np.ndarray, noise: np.ndarray | None) -> tuple[np.ndarray, int]:
        if hold.is_set():
            running.set()
            release.wait(30)
        return original(obs, noise)

    close = server._streams.close
    monkeypatch.setattr(model, "run", held_run)
    monkeypatch.setattr(server._streams, "close", lambda: (close(), closed.set()))
    client = PolicyClient(server.address, timeout_s=30)
    idle = client.session(period_s=1.0)
    idle.act(np.zeros(OBS_DIM, np.float32))  # its stream stays open, with nothing in flight
    requests: queue.Queue = queue.Queue()
    busy = client.stub.StreamAct(iter(requests.get, None), timeout=30)
    stopper = threading.Thread(target=server.stop)  # grace None: the configured 30 s
    try:
        hold.set()
        requests.put(pb.StreamActRequest(seq=1, obs=encode(np.zeros(OBS_DIM, np.float32))))
        assert running.wait(30)
        started = time.monotonic()
        stopper.start()
        assert closed.wait(30)
        release.set()
        reply = next(busy)
        assert reply.seq == 1 and not reply.status.code and decode(reply.action).shape == (ACT_DIM,)
        assert next(busy, None) is None  # ended with OK, not cancelled
        stopper.join(10)
        assert not stopper.is_alive() and time.monotonic() - started < 10
    finally:
        release.set()
        requests.put(None)
        stopper.join(30)
        idle.close()
        client.close()


FROZEN_ROBOT = """
import sys, time
import numpy as np
import pytest
from flowrl_deploy.client import PolicyClient
session = PolicyClient(sys.argv[1], timeout_s=30).session(period_s=0.02)
session.act(np.zeros({obs_dim}, np.float32))
print("streaming", flush=True)
for _ in range(3000):  # a 50 Hz robot, for at most a minute
    session.act(np.zeros({obs_dim}, np.float32))
    time.sleep(0.02)
"""


def test_stop_is_prompt_when_a_frozen_peer_holds_an_idle_stream(tmp_path):
    """A robot whose process was stopped (kill -STOP) while its StreamAct was open kept stop()
    waiting out the whole grace period: its stream was ended at once, but gRPC's stop also waits
    for every client to answer its GOAWAY, which a frozen peer never does."""
    path = write_policy(tmp_path / "policy.onnx")
    grace = 30
    server = PolicyServer(ServeConfig(str(path), port=0, grace_s=grace)).start()
    robot = subprocess.Popen(
        [sys.executable, "-c", FROZEN_ROBOT.format(obs_dim=OBS_DIM), server.address],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert select.select([robot.stdout], [], [], 60)[0], "the robot never started streaming"
        assert robot.stdout.readline() == "streaming\n"
        os.kill(robot.pid, signal.SIGSTOP)
        started = time.monotonic()
        server.stop()  # grace None: the configured 30 s
        assert time.monotonic() - started < grace / 3
    finally:
        robot.kill()  # SIGKILL ends a stopped process too
        robot.wait(30)
        robot.stdout.close()
        server.stop()


def test_stop_ends_health_watches_once_they_have_sent_not_serving(tmp_path):
    """A health Watch (gRPC clients' health checking holds one per connection) kept stop() waiting
    for the whole grace period: it now ends with OK right after its NOT_SERVING, and a Watch of a
    service the server does not know (nothing more to send) ends too."""
    path = write_policy(tmp_path / "policy.onnx")
    server = PolicyServer(ServeConfig(str(path), port=0, grace_s=30)).start()
    client = PolicyClient(server.address, timeout_s=30)
    stub = health_pb2_grpc.HealthStub(client.channel)
    watches = [
        stub.Watch(health_pb2.HealthCheckRequest(service=name), timeout=30) for name in ("", "flowrl.v1.PolicyService")
    ]
    unknown = stub.Watch(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=30)
    stopper = threading.Thread(target=server.stop)  # grace None: the configured 30 s
    try:
        assert [next(watch).status for watch in watches] == [health_pb2.HealthCheckResponse.SERVING] * 2
        assert next(unknown).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        stopper.start()
        for watch in watches:
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert next(watch, None) is None  # ended with OK
        try:  # cancelled, or ended with OK if the stop came before its first reply was sent
            assert next(unknown, None) is None
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.CANCELLED
        stopper.join(10)
        assert not stopper.is_alive()  # long before the 30 s grace period
    finally:
        stopper.join(30)
        client.close()


def test_a_signal_during_start_up_stops_the_server_without_announcing_it(tmp_path, monkeypatch):
    """Ctrl-C while the model loaded still printed "serving … on …", then exited."""
    path = write_policy(tmp_path / "policy.onnx")
    start = PolicyServer.start

    def start_then_ctrl_c(self: PolicyServer) -> PolicyServer:
        started = start(self)
        os.kill(os.getpid(), signal.SIGINT)  # handled by serve_forever's handler, in this (main) thread
        return started

    monkeypatch.setattr(PolicyServer, "start", start_then_ctrl_c)
    announced: list[PolicyServer] = []
    serve_forever(ServeConfig(str(path), port=0, grace_s=0), on_ready=announced.append)
    assert not announced


def test_a_stop_signal_during_a_long_start_up_stops_it_without_waiting_for_the_load(tmp_path, monkeypatch, caplog):
    """SIGTERM while the model loaded (a checkpoint exported on the fly: a minute) was acted on only once
    the load was done, past a service manager's stop timeout, which then killed the server."""
    from flowrl_deploy.serve.model import ModelSlot

    path = write_policy(tmp_path / "policy.onnx")
    loading = threading.Event()
    slots: list[ModelSlot] = []
    load = ModelSlot.load

    def long_load(self: ModelSlot, *args, **kwargs):
        slots.append(self)
        loading.set()
        until = time.monotonic() + 10  # a long load, in Python code (the steps of an export)
        while time.monotonic() < until:
            time.sleep(0.01)
        return load(self, *args, **kwargs)

    def stop_once_loading() -> None:
        if loading.wait(30):
            os.kill(os.getpid(), signal.SIGTERM)  # handled by serve_forever's handler, in the main thread

    monkeypatch.setattr(ModelSlot, "load", long_load)
    stopper = threading.Thread(target=stop_once_loading)
    stopper.start()
    announced: list[PolicyServer] = []
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger="flowrl.serve"):
        abandoned = serve_forever(ServeConfig(str(path), port=0, grace_s=0), on_ready=announced.append)
    took = time.monotonic() - start
    stopper.join(30)
    assert took < 5, f"the stop waited {took:.1f} s for the load"
    assert abandoned == 0 and not announced
    (slot,) = slots
    assert slot.model is None  # the load was stopped, not finished
    messages = [record.getMessage() for record in caplog.records if record.name == "flowrl.serve"]
    assert "stopping on SIGTERM during start-up: the model was not served" in messages, messages
    assert re.fullmatch(r"stopped in \d+\.\d s", messages[-1]), messages


def test_a_server_stopped_while_it_starts_does_not_report_serving(tmp_path, monkeypatch):
    """PolicyServer.stop() from another thread while start() loaded: start() returned as if it
    served, and health said SERVING (flowrl_serving 1) on a stopped server."""
    from flowrl_deploy.serve.model import ModelSlot

    loading, release = threading.Event(), threading.Event()
    load = ModelSlot.load

    def held_load(self: ModelSlot, *args, **kwargs):
        loading.set()
        release.wait(30)
        return load(self, *args, **kwargs)

    monkeypatch.setattr(ModelSlot, "load", held_load)
    server = PolicyServer(ServeConfig(str(write_policy(tmp_path / "policy.onnx")), port=0, grace_s=0))
    raised: list[BaseException] = []

    def start() -> None:
        try:
            server.start()
        except BaseException as exc:
            raised.append(exc)

    starter = threading.Thread(target=start)
    starter.start()
    try:
        assert loading.wait(30)
        server.stop()
    finally:
        release.set()
        starter.join(30)
    (exc,) = raised
    assert isinstance(exc, FlowRLError) and "stopped while it started" in str(exc)
    assert not server._serving and not server.alive()
    assert server.health._server_status[""] == health_pb2.HealthCheckResponse.NOT_SERVING


def test_serve_forever_logs_once_the_stop_has_finished(tmp_path, caplog):
    """The stop logged "stopping: finishing calls in flight" and nothing once done: a log could not
    tell a finished stop from one still waiting for calls in flight, or hung."""
    path = write_policy(tmp_path / "policy.onnx")
    with caplog.at_level(logging.INFO, logger="flowrl.serve"):
        serve_forever(
            ServeConfig(str(path), port=0, grace_s=0), on_ready=lambda _: os.kill(os.getpid(), signal.SIGTERM)
        )
    messages = [record.getMessage() for record in caplog.records if record.name == "flowrl.serve"]
    assert messages[-2] == "stopping on SIGTERM: finishing calls in flight"
    assert re.fullmatch(r"stopped in \d+\.\d s", messages[-1]), messages


def test_serve_forever_from_another_thread_is_refused_naming_the_way_to_serve_from_one(tmp_path):
    """It raised a raw ValueError ("signal only works in main thread of the main interpreter")."""
    path = write_policy(tmp_path / "policy.onnx")
    raised: list[BaseException] = []

    def serve() -> None:
        try:
            serve_forever(ServeConfig(str(path), port=0, grace_s=0))
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    (exc,) = raised
    assert isinstance(exc, FlowRLError)
    assert "main thread" in str(exc) and "PolicyServer(config).start()" in str(exc)


def test_a_stop_signal_while_the_server_is_built_stops_it_before_its_load(tmp_path, monkeypatch, caplog):
    """A SIGTERM in the moment before start() was only noted, and the whole load ran before the stop."""
    from flowrl_deploy.serve.model import ModelSlot

    path = write_policy(tmp_path / "policy.onnx")
    build = PolicyServer.__init__
    loads: list[ModelSlot] = []

    def build_then_sigterm(self: PolicyServer, *args, **kwargs) -> None:
        build(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # handled by serve_forever's handler, in this (main) thread

    monkeypatch.setattr(PolicyServer, "__init__", build_then_sigterm)
    monkeypatch.setattr(ModelSlot, "load", lambda self, *args, **kwargs: loads.append(self))
    announced: list[PolicyServer] = []
    with caplog.at_level(logging.INFO, logger="flowrl.serve"):
        assert serve_forever(ServeConfig(str(path), port=0, grace_s=0), on_ready=announced.append) == 0
    assert not loads and not announced
    messages = [record.getMessage() for record in caplog.records if record.name == "flowrl.serve"]
    assert "stopping on SIGTERM during start-up: the model was not served" in messages, messages


def test_a_server_that_cannot_be_built_leaves_the_signal_handlers_as_they_were(tmp_path, monkeypatch):
    """A program embedding serve_forever kept its stop handler after a failed build: Ctrl-C did nothing."""
    path = write_policy(tmp_path / "policy.onnx")

    def cannot_build(self: PolicyServer, *args, **kwargs) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(PolicyServer, "__init__", cannot_build)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(RuntimeError, match="can't start new thread"):
        serve_forever(ServeConfig(str(path), port=0, grace_s=0))
    assert {sig: signal.getsignal(sig) for sig in before} == before


@pytest.mark.parametrize("applied", [False, True])
def test_start_says_it_leaves_cpus_alone_unless_its_caller_applies_them(tmp_path, caplog, applied):
    """PolicyServer.start() does not pin its process (it may share it): it says so, unless its caller
    (serve_forever) applies config.cpus to the process itself."""
    config = ServeConfig(str(write_policy(tmp_path / "policy.onnx")), port=0, grace_s=0, cpus=(0,))
    server = PolicyServer(config, process_settings_applied=applied)
    with caplog.at_level(logging.INFO, logger="flowrl.serve"):
        server.start()
    server.stop()
    said = [record.getMessage() for record in caplog.records]
    assert sum("not applied by PolicyServer.start()" in message for message in said) == (0 if applied else 1)
