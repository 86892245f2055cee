"""Edges of the service that no other module reaches: a method the service lacks, a batched
deterministic graph, metrics on a host given by name, and the status a library error maps to."""

from __future__ import annotations

import threading
import urllib.request

import grpc
import numpy as np
import pytest
from tiny_policy import OBS_DIM, write_policy

from flowrl_deploy.client import PolicyClient
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.policy import OnnxPolicy
from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.serve.errors import status_of


def test_an_unknown_method_is_unimplemented_and_the_server_keeps_serving(server, client):
    with grpc.insecure_channel(server.address) as channel:
        nope = channel.unary_unary("/flowrl.v1.PolicyService/Nope")
        with pytest.raises(grpc.RpcError) as caught:
            nope(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert client.act(np.zeros(OBS_DIM, np.float32), seed=0).shape[-1] > 0


def test_concurrent_calls_batched_through_a_deterministic_graph_each_get_their_own_action(tmp_path):
    path = write_policy(tmp_path / "det.onnx", deterministic=True)
    config = ServeConfig(str(path), port=0, grace_s=0, max_batch=8, batch_window_us=20_000, batch_workers=1)
    observations = np.random.default_rng(0).standard_normal((6, OBS_DIM)).astype(np.float32)
    actions: dict[int, np.ndarray] = {}
    with PolicyServer(config).start() as running, PolicyClient(running.address) as client:
        histogram = running.servicer.metrics.batch_size
        rows_before = histogram.total
        start = threading.Barrier(len(observations))

        def call(i: int) -> None:
            start.wait(timeout=10)
            actions[i] = client.act(observations[i])

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(observations))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        rows = histogram.total - rows_before
    expected = OnnxPolicy(path).act(observations)
    served = np.stack([actions[i].reshape(-1) for i in range(len(observations))])
    np.testing.assert_allclose(served, expected, atol=1e-6)
    assert rows == len(observations)  # how they were batched: test_serve_batcher, without timing


def test_metrics_answer_on_a_host_given_by_name(policy_path):
    config = ServeConfig(str(policy_path), host="localhost", port=0, metrics_port=0, grace_s=0)
    with PolicyServer(config).start() as running:
        # the metrics server resolves a host name as IPv4 (as http.server does): `localhost` is 127.0.0.1
        # there, however the resolver orders ::1 and 127.0.0.1 (gRPC's `localhost` port is not asked)
        url = f"http://127.0.0.1:{running.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            assert reply.status == 200 and b"flowrl_requests_total" in reply.read()


def test_a_library_error_raised_in_a_handler_is_failed_precondition_with_its_message():
    assert status_of(FlowRLError("the model is gone")) == (grpc.StatusCode.FAILED_PRECONDITION, "the model is gone")
    code, message = status_of(RuntimeError("secret path /etc/x"))
    assert code == grpc.StatusCode.INTERNAL and "secret" not in message
