"""INTERNAL failures (a bug, or the runtime failing each call: out of memory, a CUDA error) are logged
with their traceback once per method and exception type, then at most once a minute with the number
held back; onnxruntime's own coloured line for a failed run is not printed (the exception says it)."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny_policy import OBS_DIM, save_policy, tiny_contract

from flowrl_deploy.client import PolicyClient, ServiceError
from flowrl_deploy.codec import encode
from flowrl_deploy.policy import OnnxPolicy
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.serve import metrics as metrics_module

FAILS = np.array([5.0, 0.0, 0.0], np.float32)
"""An observation the failing policy cannot run (its obs[0] indexes a table of one row)."""
CPU = ["CPUExecutionProvider"]
"""Where the failing policy runs: the CPU's Gather refuses an index out of bounds; CUDA's, the default on a
GPU host, gives 0 for it and the run succeeds."""


def write_failing_policy(path: Path) -> Path:
    """A tiny deterministic policy that warms up (zeros) but fails inside onnxruntime when obs[0] >= 1:
    a Gather out of its table's bounds, which onnxruntime refuses in its kernel, each run."""
    contract = tiny_contract(deterministic=True)
    low = np.asarray(contract.action_low, np.float32)
    high = np.asarray(contract.action_high, np.float32)
    inits = [
        numpy_helper.from_array(np.random.default_rng(7).standard_normal((OBS_DIM, 2)).astype(np.float32), "W"),
        numpy_helper.from_array((high - low) / 2, "half_range"),
        numpy_helper.from_array((high + low) / 2, "center"),
        numpy_helper.from_array(np.zeros(1, np.float32), "table"),
        numpy_helper.from_array(np.array([0], np.int64), "s0"),
        numpy_helper.from_array(np.array([1], np.int64), "s1"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
    ]
    nodes = [
        helper.make_node("MatMul", ["obs", "W"], ["h"]),
        helper.make_node("Tanh", ["h"], ["t"]),
        helper.make_node("Mul", ["t", "half_range"], ["s"]),
        helper.make_node("Add", ["s", "center"], ["a0"]),
        helper.make_node("Slice", ["obs", "s0", "s1", "ax1"], ["o0"]),
        helper.make_node("Cast", ["o0"], ["i0"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "i0"], ["g"], axis=0),
        helper.make_node("Add", ["a0", "g"], ["action"]),
    ]
    inputs = [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["B", OBS_DIM])]
    return save_policy(path, contract, "failing_policy", nodes, inputs, inits)


@pytest.fixture
def failing(tmp_path):
    path = write_failing_policy(tmp_path / "policy.onnx")
    server = PolicyServer(ServeConfig(str(path), port=0, grace_s=0, providers=tuple(CPU))).start()
    with server, PolicyClient(server.address) as client:
        yield server, client


def _stream(client: PolicyClient, session_id: str, count: int) -> list[pb.StreamActReply]:
    requests = (pb.StreamActRequest(session_id=session_id, seq=k, obs=encode(FAILS)) for k in range(count))
    return list(client.stub.StreamAct(requests, timeout=60))


def _errors(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "flowrl.serve" and r.levelno >= logging.ERROR]


def test_a_failing_model_logs_one_traceback_per_method_not_one_per_request(failing, caplog, capfd, monkeypatch):
    """400 failing StreamAct requests (one robot at 200 Hz for 2 s) made 400 tracebacks (10,800 lines
    with onnxruntime's); now one per method and exception type, then one a minute with the count."""
    server, client = failing
    with caplog.at_level(logging.ERROR, logger="flowrl.serve"):
        replies = _stream(client, "flood", 400)
        for _ in range(20):
            with pytest.raises(ServiceError) as info:
                client.act(FAILS)
            assert info.value.code == grpc.StatusCode.INTERNAL
    assert {reply.status.code for reply in replies} == {grpc.StatusCode.INTERNAL.value[0]}
    errors = _errors(caplog)
    assert [r.getMessage() for r in errors] == ["StreamAct request failed", "Act failed"]
    assert all(r.exc_info and "INVALID_ARGUMENT" in str(r.exc_info[1]) for r in errors)  # the traceback's
    assert "[E:onnxruntime" not in capfd.readouterr().err  # its coloured line repeated the exception's words
    # every failure is counted all the same
    requests = dict(((m, c), n) for m, c, n in _requests(server))
    assert requests[("StreamAct", "INTERNAL")] >= 400 and requests[("Act", "INTERNAL")] >= 20

    caplog.clear()
    monkeypatch.setattr(metrics_module, "LIMIT_WARNING_S", 0.0)  # a minute later: the next one is due
    with caplog.at_level(logging.ERROR, logger="flowrl.serve"):
        _stream(client, "later", 1)
    (record,) = _errors(caplog)
    message = record.getMessage()
    assert message.startswith("StreamAct request failed (and 399 more StreamAct failures with InvalidArgument")
    assert message.endswith(" s, not logged)") and record.exc_info


def test_another_exception_type_gets_its_own_first_traceback(failing, caplog, monkeypatch):
    server, client = failing
    _stream(client, "first", 2)  # the onnxruntime failure's first line
    caplog.clear()

    def broken(obs, noise):
        raise MemoryError("out of memory")

    monkeypatch.setattr(server.servicer.model, "run", broken)
    with caplog.at_level(logging.ERROR, logger="flowrl.serve"):
        _stream(client, "oom", 50)
    errors = _errors(caplog)
    assert len(errors) == 1 and isinstance(errors[0].exc_info[1], MemoryError)
    assert errors[0].getMessage() == "StreamAct request failed"


def test_a_failed_run_leaves_no_onnxruntime_line_and_raises_its_message(tmp_path, capfd):
    policy = OnnxPolicy(write_failing_policy(tmp_path / "policy.onnx"), providers=CPU)
    capfd.readouterr()
    with pytest.raises(Exception, match="indices element out of data bounds"):
        policy.act(FAILS)
    assert "onnxruntime" not in capfd.readouterr().err
    assert policy.act(np.zeros(OBS_DIM, np.float32)).shape == (2,)


def _requests(server) -> list[tuple[str, str, int]]:
    return [(m, c, n) for (m, c), n in server.servicer.metrics.requests.items()]
