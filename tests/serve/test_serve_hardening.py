"""What a client, or a file dropped where the server reloads from, could do to the server before
the security review of session 11: memory without bound, a file outside the served folder read
into the weights, a blocked reload, tracebacks in the log."""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper

from flowrl_deploy import onnxfile, ort
from flowrl_deploy.codec import TensorError, decode, encode
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.serve import metrics_http
from flowrl_deploy.serve import reload as watch
from flowrl_deploy.serve.errors import ServeError
from flowrl_deploy.serve.metrics import Metrics
from flowrl_deploy.serve.metrics_http import start_metrics_http
from flowrl_deploy.serve.servicer import MAX_SESSION_ID

OBS = np.zeros(3, np.float32)


def test_a_health_watch_of_an_unknown_service_is_answered_once_and_kept_nowhere(server):
    """grpc's health service kept every name a Watch asked for, for good: Watches of ever new
    megabyte names (no token needed) grew the server's memory without bound."""
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        replies = list(stub.Watch(health_pb2.HealthCheckRequest(service="x" * 1000), timeout=5))
        assert [r.status for r in replies] == [health_pb2.HealthCheckResponse.SERVICE_UNKNOWN]  # then it ended
        assert "x" * 1000 not in server.health._send_response_callbacks
        watch_all = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert next(watch_all).status == health_pb2.HealthCheckResponse.SERVING
        watch_all.cancel()


def _model_with_external_data(location: str) -> bytes:
    """A graph whose one tensor is stored in another file, ``location`` (onnx's external data)."""
    tensor = TensorProto(name="c", data_type=TensorProto.UINT8, dims=[2], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("length", "2")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Cast", ["c"], ["y"], to=TensorProto.FLOAT)],
        "exfiltrate",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[tensor],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


def test_a_model_whose_tensors_lie_in_other_files_is_refused(tmp_path, monkeypatch):
    """A model loaded from bytes read 'external data' beside the server's working directory into its
    weights, and its actions gave the bytes back: a dropped file could read a secret there."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.env").write_bytes(b"SECRET")
    with pytest.raises(FlowRLError, match=r"cannot load ONNX model exfiltrate\.onnx"):
        ort.make_session(_model_with_external_data("secret.env"), name="exfiltrate.onnx")


def test_a_pipe_swapped_in_after_the_check_is_not_read(tmp_path, monkeypatch):
    """The check and the read were two steps: a FIFO put in place between them blocked the reload,
    which held the reload lock, for good."""
    fifo = tmp_path / "policy.onnx"
    os.mkfifo(fifo)
    monkeypatch.setattr(onnxfile, "check_policy_file", lambda path: None)  # the file as it was when checked
    outcome = []

    def read() -> None:
        try:
            onnxfile.read_policy_file(fifo)
        except FlowRLError as exc:
            outcome.append(str(exc))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(30)
    assert outcome == [f"{fifo} is not a regular file (a device, pipe or socket), so not an ONNX model"]


def test_a_file_larger_than_an_onnx_file_can_be_is_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "big.onnx"
    path.write_bytes(b"\0" * 100)
    monkeypatch.setattr(onnxfile, "MAX_POLICY_BYTES", 99)
    with pytest.raises(FlowRLError, match="holds 100 bytes, more than an ONNX file can"):
        onnxfile.read_policy_file(path)


@pytest.mark.parametrize("call", ["Reset", "Act", "StreamAct"])
def test_a_session_id_longer_than_the_limit_is_refused(client, call):
    """Resets with megabyte ids kept each for the idle period: gigabytes at --max-sessions."""
    session_id = "r" * (MAX_SESSION_ID + 1)
    if call == "StreamAct":
        (reply,) = client.stub.StreamAct(iter([pb.StreamActRequest(session_id=session_id, obs=encode(OBS))]))
        code, message = reply.status.code, reply.status.message
    else:
        request = (
            pb.ResetRequest(session_id=session_id)
            if call == "Reset"
            else pb.ActRequest(session_id=session_id, obs=encode(OBS))
        )
        with pytest.raises(grpc.RpcError) as refused:
            getattr(client.stub, call)(request, timeout=5)
        code, message = refused.value.code().value[0], refused.value.details()
    assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert message == f"session_id of {MAX_SESSION_ID + 1} characters: at most {MAX_SESSION_ID}"
    client.reset("r" * MAX_SESSION_ID, seed=1)  # the longest allowed


def test_a_tensor_of_too_many_dimensions_is_refused_naming_them():
    """65 dimensions reached numpy's own ValueError: INTERNAL and a traceback per request."""
    with pytest.raises(TensorError, match="shape has 65 dimensions; a policy's tensors have at most 2"):
        decode(pb.Tensor(shape=[1] * 65, values=[1.0]), name="obs")


@pytest.mark.parametrize("contract_json", ["[" * 200_000, '{"obs_dim": ' + "9" * 5000 + "}"])
def test_a_contract_json_too_deep_or_with_a_huge_number_is_invalid_argument(client, contract_json, caplog):
    """A RecursionError or Python's integer-size ValueError escaped as INTERNAL, with a traceback logged."""
    with caplog.at_level(logging.ERROR, logger="flowrl.serve"), pytest.raises(grpc.RpcError) as refused:
        client.stub.Reset(pb.ResetRequest(session_id="deep", contract_json=contract_json), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("contract_json is not a policy contract: ")
    assert not caplog.records


def test_the_metrics_port_drops_a_silent_connection_and_logs_no_traceback(monkeypatch, capfd):
    """Each connection held a thread for good, and a client resetting its connection printed a
    traceback with the server's paths: anyone reaching the port could do either without end."""
    monkeypatch.setattr(metrics_http, "METRICS_TIMEOUT_S", 0.5)
    httpd = start_metrics_http(Metrics(lambda: 0, lambda: "v1-test"), "127.0.0.1", 0)
    port = httpd.server_address[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as silent:
            assert silent.recv(1) == b""  # closed by the server once silent for its timeout
        reset = socket.create_connection(("127.0.0.1", port), timeout=30)
        reset.sendall(b"GET /metrics HTTP/1.1\r\n")
        reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        reset.close()  # an RST, not a FIN
        time.sleep(1.0)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
            assert b"flowrl_" in reply.read()  # still serving
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert "Traceback" not in capfd.readouterr().err


def test_a_refused_watch_reload_is_logged_escaped(tmp_path, caplog):
    """The refusal's text comes from the file (an output's name, say): a newline in it forged a log line."""
    path = tmp_path / "policy.onnx"
    path.write_bytes(b"first")

    def refuse() -> None:
        raise FlowRLError("graph output 'a\n2026-11-26 18:30:00,000 INFO flowrl.serve: reloaded' is unknown")

    watcher = watch.FileWatcher(path, refuse, interval_s=0.01).start()
    try:
        with caplog.at_level(logging.WARNING, logger="flowrl.serve"):
            path.write_bytes(b"second")
            deadline = time.monotonic() + 30
            while not caplog.records and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        watcher.stop(5)
    (record,) = caplog.records
    assert "\n" not in record.getMessage() and "a\\n2026" in record.getMessage()


def test_a_reload_waiting_behind_another_gives_up_at_its_callers_deadline(server, client):
    """Reloads whose callers had given up waited on, each holding a handler thread, behind a slow
    (or stuck) reload: the control calls' threads ran out, and health checks with them."""
    failures = client.stats().reload_failures
    assert server.servicer.slot.load_lock.acquire(timeout=30)  # a reload in progress
    try:
        with pytest.raises(grpc.RpcError) as late:
            client.stub.Reload(pb.ReloadRequest(), timeout=0.5)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 30  # its handler returns too, while the other reload still runs
        while client.stats().reload_failures == failures and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.stats().reload_failures == failures + 1
    finally:
        server.servicer.slot.load_lock.release()


def test_a_link_swapped_for_a_file_during_the_last_check_is_no_usable_path(tmp_path, monkeypatch):
    """Path.resolve raised EINVAL (a link became a regular file between lstat and readlink) in the
    check of the resolved target, outside the handling: INTERNAL and a traceback per Reload."""
    served = tmp_path / "policy.onnx"
    served.write_bytes(b"served")
    (tmp_path / "x.onnx").write_bytes(b"new")
    real_resolve, calls = Path.resolve, []

    def racing_resolve(self, strict=False):
        if self.name == "x.onnx":
            calls.append(self)
            if len(calls) == 3:  # the target's own check, after the candidate's check and resolve
                raise OSError(errno.EINVAL, "Invalid argument", str(self))
        return real_resolve(self, strict)

    monkeypatch.setattr(Path, "resolve", racing_resolve)
    with pytest.raises(ServeError, match=r"is no usable path \(Invalid argument\)") as refused:
        watch.reload_target(str(served), "x.onnx")
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_the_metrics_port_serves_a_few_connections_at_once(monkeypatch):
    """A client sending a header line every few seconds kept its connection (and thread) open past
    the read timeout, and connections were not capped: one thread each, without end. The total cap
    is seen apart from the per-address one (all three come from one address, under its own cap)."""
    monkeypatch.setattr(metrics_http, "METRICS_CONNECTIONS", 2)
    monkeypatch.setattr(metrics_http, "METRICS_PER_PEER", 10)
    metrics = Metrics(lambda: 0, lambda: "v1-test")
    httpd = start_metrics_http(metrics, "127.0.0.1", 0)
    port = httpd.server_address[1]
    held = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(2)]
    try:
        for connection in held:
            connection.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the end of the headers
        # a 4 s wait, under METRICS_TIMEOUT_S (5 s), leaves a loaded machine's accepting thread its time
        with socket.create_connection(("127.0.0.1", port), timeout=4) as third:
            assert third.recv(1) == b""  # closed unanswered at once while two are open, not at the deadline
        deadline = time.monotonic() + 30
        while metrics.metrics_refused != 1 and time.monotonic() < deadline:  # counted just after the close
            time.sleep(0.01)
        assert metrics.metrics_refused == 1
        for connection in held:
            connection.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # their threads end once they see the close
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                    assert b"flowrl_" in reply.read()
                    break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("the metrics port never answered again")
    finally:
        httpd.shutdown()
        httpd.server_close()
