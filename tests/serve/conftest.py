"""A tiny policy file, a real server on a free local port and a client, per test module. The server and
``local`` run on the CPU, as a ControlSession's local fallback does: on a GPU host the default providers
are CUDA's, whose actions equal the CPU's only to about 1e-6."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest
from tiny_policy import write_policy

from flowrl_deploy.client import PolicyClient
from flowrl_deploy.policy import OnnxPolicy
from flowrl_deploy.serve import PolicyServer, ServeConfig

CPU = ("CPUExecutionProvider",)
CALL_TIMEOUT_S = 10.0
"""The fixtures' clients' unary deadline: PolicyClient's default of 1 s failed a call once on a machine
loaded by other work (load average 14); tests of that default make a client of their own."""


@pytest.fixture(scope="module")
def policy_path(tmp_path_factory) -> Path:
    return write_policy(tmp_path_factory.mktemp("policy") / "policy.onnx")


@pytest.fixture(scope="module")
def server(policy_path):
    config = ServeConfig(str(policy_path), port=0, grace_s=0.5, providers=CPU)
    with PolicyServer(config).start() as running:
        yield running


@pytest.fixture
def served(tmp_path):
    """A server of ``tmp_path``/policy.onnx that watches it (every 50 ms), its client, and ``tmp_path``."""
    path = write_policy(tmp_path / "policy.onnx")
    config = ServeConfig(str(path), port=0, watch=True, watch_interval_s=0.05, grace_s=0)
    with PolicyServer(config).start() as server, PolicyClient(server.address, timeout_s=CALL_TIMEOUT_S) as client:
        yield server, client, tmp_path


@pytest.fixture(scope="module")
def client(server):
    with PolicyClient(server.address, timeout_s=CALL_TIMEOUT_S) as connected:
        yield connected


@pytest.fixture(scope="module")
def local(policy_path):
    return OnnxPolicy(policy_path, providers=list(CPU))


@pytest.fixture
def hold():
    """Open calls whose request message never comes (a raw stream-request call that sends nothing),
    each holding its slot and thread; they end when the test does."""
    release = threading.Event()
    calls = []

    def nothing():
        release.wait(60)
        return
        yield

    def held(channel: grpc.Channel, method: str, metadata=None) -> grpc.Future:
        opened = channel.stream_unary(method, request_serializer=bytes, response_deserializer=bytes)
        call = opened.future(nothing(), metadata=metadata, timeout=60)
        calls.append(call)
        return call

    yield held
    release.set()
    for call in calls:
        call.cancel()
