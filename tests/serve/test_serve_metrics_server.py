"""The metrics of a running server: what identifies its model and build across a fleet."""

from __future__ import annotations

import logging
import platform
import re
import socket
import time
import urllib.request

import grpc
import pytest
from deploying import wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc
from loading_server import loading_server
from tiny_policy import write_policy

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.ort import import_onnxruntime
from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.serve import metrics as metrics_module
from flowrl_deploy.serve.interceptors import SERVICE_NAME
from flowrl_deploy.serve.metrics import Metrics
from flowrl_deploy.serve.server import banner
from flowrl_deploy.versions import release

SERVING = health_pb2.HealthCheckResponse.SERVING


def _series(text: str, name: str) -> list[tuple[dict[str, str], str]]:
    """Each sample of ``name`` in an exposition: its labels and its value."""
    found = []
    for match in re.finditer(rf"^{name}(?:\{{(.*)\}})? (\S+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[1] or ""))
        found.append((labels, match[2]))
    return found


def _scrape(server: PolicyServer) -> str:
    with urllib.request.urlopen(f"http://{server.metrics_address}/metrics", timeout=30) as reply:
        return reply.read().decode()


def test_build_info_names_the_release_onnxruntime_and_python():
    """The release was in GetStats only: a fleet's servers could not be told apart by build (obs M7)."""
    text = Metrics(lambda: 0, lambda: "v1-test").exposition()
    assert "# TYPE flowrl_build_info gauge" in text
    assert _series(text, "flowrl_build_info") == [
        (
            {
                "version": release(),
                "onnxruntime": import_onnxruntime().__version__,
                "python": platform.python_version(),
            },
            "1",
        )
    ]


def test_build_info_survives_an_onnxruntime_that_cannot_be_imported(monkeypatch):
    import flowrl_deploy.ort

    def broken():
        raise ImportError("no onnxruntime")

    monkeypatch.setattr(flowrl_deploy.ort, "import_onnxruntime", broken)
    metrics_module.build_labels.cache_clear()
    try:
        assert metrics_module.build_labels()["onnxruntime"] == ""
    finally:
        metrics_module.build_labels.cache_clear()


MS_ROUNDING = 0.0005
"""flowrl_model_loaded_timestamp_seconds is the swap's time.time() to the nearest ms (``.3f``): up to
0.5 ms either side of it. A reload that took d < 0.5 ms (the tiny policy reloads in about 0.9 ms on a
busy 2-core host, faster elsewhere) printed a time before the test's reading before it in 0.5 - d of
runs, d in ms, as the clock's sub-ms phase fell: 20 % of runs for a 0.3 ms reload."""


def test_model_info_names_the_same_bytes_alike_on_every_server(tmp_path):
    """`version` is v<this server's generation>-<sha prefix>: the same bytes read v2-… on a server that
    reloaded once and v1-… on a fresh one, and a fleet skew alert fired for identical models. The
    sha256 prefix, contract hash, flow steps and providers are the same wherever the bytes are served
    (obs M7); `version` stays, for compatibility."""
    first, second = write_policy(tmp_path / "first.onnx"), write_policy(tmp_path / "second.onnx", scale=2.0)
    served = tmp_path / "policy.onnx"
    served.write_bytes(first.read_bytes())
    reloaded = PolicyServer(ServeConfig(str(served), port=0, metrics_port=0, grace_s=0))
    with reloaded.start():
        before = _series(_scrape(reloaded), "flowrl_model_info")
        (loaded_at,) = _series(_scrape(reloaded), "flowrl_model_loaded_timestamp_seconds")
        assert time.time() - 60 < float(loaded_at[1]) <= time.time() + MS_ROUNDING
        served.write_bytes(second.read_bytes())
        started = time.time()
        reloaded.servicer.slot.load()
        reloaded_text = _scrape(reloaded)
    (reloaded_at,) = _series(reloaded_text, "flowrl_model_loaded_timestamp_seconds")
    assert started - MS_ROUNDING <= float(reloaded_at[1]) <= time.time() + MS_ROUNDING
    fresh = PolicyServer(ServeConfig(str(second), port=0, metrics_port=0, grace_s=0))
    with fresh.start():
        (fresh_info,) = _series(_scrape(fresh), "flowrl_model_info")
        model = fresh.servicer.model
    (info,) = _series(reloaded_text, "flowrl_model_info")
    assert info[0]["version"].startswith("v2-") and fresh_info[0]["version"].startswith("v1-")
    same = {key: value for key, value in info[0].items() if key != "version"}
    assert same == {key: value for key, value in fresh_info[0].items() if key != "version"}
    assert same == {
        "sha256": model.sha256[:12],
        "contract_hash": model.contract.hash(),
        "flow_steps": str(model.contract.flow_steps),
        "providers": ",".join(model.policy.session.get_providers()),
    }
    assert before[0][0]["sha256"] != same["sha256"]


def test_metrics_are_served_while_the_model_loads_and_say_it_is_not_serving_yet(tmp_path, monkeypatch, caplog):
    """Metrics started only once the model had loaded and warmed up, and nothing was logged before
    "loaded": a checkpoint exported on the fly for a minute looked like a crashed server, and no
    metric told NOT_SERVING from SERVING (obs M4)."""
    path = write_policy(tmp_path / "policy.onnx")
    with (
        caplog.at_level(logging.INFO, logger="flowrl.serve"),
        loading_server(str(path), monkeypatch, metrics_port=0) as (server, release_load),
    ):
        told = [r.getMessage() for r in caplog.records]
        loading = [m for m in told if m.startswith(f"loading {path}")]
        assert len(loading) == 1 and server.bound_address in loading[0], told
        assert loading[0].endswith(f", metrics on {server.metrics_address})"), told
        text = _scrape(server)
        assert _series(text, "flowrl_serving") == [({}, "0")]
        assert not _series(text, "flowrl_model_info")
        assert not _series(text, "flowrl_model_loaded_timestamp_seconds")
        assert _series(text, "flowrl_build_info") and _series(text, "process_open_fds")
        release_load.set()
        assert wait_for(lambda: _series(_scrape(server), "flowrl_serving") == [({}, "1")])
        assert _series(_scrape(server), "flowrl_model_info")[0][0]["version"].startswith("v1-")
        stopping: list[str] = []
        stop_grpc = server._stop_grpc

        def scrape_then_stop(*args) -> None:  # the stop's window: NOT_SERVING, calls finishing
            stopping.append(_scrape(server))
            stop_grpc(*args)

        server._stop_grpc = scrape_then_stop
    assert _series(stopping[0], "flowrl_serving") == [({}, "0")]


def test_a_metrics_port_in_use_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    from flowrl_deploy.serve.model import ModelSlot

    path = write_policy(tmp_path / "policy.onnx")
    loads = []
    monkeypatch.setattr(ModelSlot, "load", lambda self, *args, **kwargs: loads.append(args))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = ServeConfig(str(path), port=0, metrics_port=taken.getsockname()[1], grace_s=0)
        with pytest.raises(FlowRLError, match="cannot serve metrics on"):
            PolicyServer(config).start()
    assert not loads


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"metrics_host": "", "metrics_port": 0}, "--metrics-host must name an interface, got ''"),
        ({"metrics_host": "[]", "metrics_port": 0}, "--metrics-host must name an interface, got '[]'"),
        ({"metrics_host": 5, "metrics_port": 0}, "--metrics-host must be a string or None, got 5"),
        ({"metrics_host": "0.0.0.0"}, "--metrics-host needs --metrics-port"),
    ],
)
def test_a_metrics_host_the_server_cannot_use_is_refused_when_the_config_is_built(setting, message):
    with pytest.raises(FlowRLError) as refused:
        ServeConfig("policy.onnx", **setting)
    assert message in str(refused.value)


def _can_bind(address: str) -> bool:
    try:
        with socket.socket() as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


def test_metrics_listen_on_their_own_host_apart_from_grpc(tmp_path):
    """--metrics-port always bound --host: metrics could not be scraped from the network while gRPC
    (Act, Reload) stayed on 127.0.0.1, nor kept local while gRPC served the LAN (obs M3)."""
    if not _can_bind("127.0.0.2"):
        pytest.skip("this machine cannot listen on 127.0.0.2")
    path = write_policy(tmp_path / "policy.onnx")
    server = PolicyServer(ServeConfig(str(path), port=0, metrics_port=0, metrics_host="127.0.0.2", grace_s=0))
    with server.start():
        assert server.metrics_address == f"127.0.0.2:{server.metrics_port}"
        assert server.bound_address.startswith("127.0.0.1:")
        assert banner(server).endswith(f", metrics on 127.0.0.2:{server.metrics_port}")
        assert _series(_scrape(server), "flowrl_serving") == [({}, "1")]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.metrics_port), timeout=30).close()


def test_a_metrics_host_of_no_interface_here_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    from flowrl_deploy.serve.model import ModelSlot

    path = write_policy(tmp_path / "policy.onnx")
    loads = []
    monkeypatch.setattr(ModelSlot, "load", lambda self, *args, **kwargs: loads.append(args))
    config = ServeConfig(str(path), port=0, metrics_port=0, metrics_host="192.0.2.1", grace_s=0)  # TEST-NET-1
    with pytest.raises(FlowRLError, match=r"cannot serve metrics on 192\.0\.2\.1:0: no interface of this machine"):
        PolicyServer(config).start()
    assert not loads


def test_flowrl_serve_takes_metrics_host(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import flowrl_deploy.serve
    from flowrl_deploy.cli import app

    called = {}
    monkeypatch.setattr(flowrl_deploy.serve, "serve_forever", lambda config, **_: called.update(config=config))
    path = write_policy(tmp_path / "policy.onnx")
    runner = CliRunner()
    result = runner.invoke(app, ["serve", str(path), "--metrics-port", "9100", "--metrics-host", "0.0.0.0"], env={})
    assert result.exit_code == 0, result.output
    assert called["config"].metrics_host == "0.0.0.0" and called["config"].host == "127.0.0.1"
    shown = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200", "TERM": "dumb"}).output
    assert "--metrics-host" in shown


def test_served_health_checks_and_watches_are_counted(tmp_path):
    """Only refused health calls were counted: kubelet and watchdog probes were invisible, and no
    refusal rate of them could be computed (obs L2)."""
    path = write_policy(tmp_path / "policy.onnx")
    server = PolicyServer(ServeConfig(str(path), port=0, metrics_port=0, grace_s=0))
    with server.start(), grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            assert stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status == SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            stub.Check(health_pb2.HealthCheckRequest(service="nothing.Here"), timeout=30)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=30)
        assert next(watch).status == SERVING
        text = _scrape(server)
        watch.cancel()
    counted = {(labels["method"], labels["code"]): value for labels, value in _series(text, "flowrl_requests_total")}
    assert counted[("Check", "OK")] == "2" and counted[("Check", "NOT_FOUND")] == "1"
    assert counted[("Watch", "OK")] == "1"
    assert _series(text, "flowrl_request_latency_seconds_count")[0] == ({"method": "Check"}, "3")


def test_a_watch_is_counted_once_however_many_replies_it_gets(served):
    """A Watch is one call: counted at each status change, a long watch would count as many calls."""
    server, _client, _path = served
    with grpc.insecure_channel(server.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=30)
        assert next(watch).status == SERVING
        server._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        server._set_health(SERVING)
        assert next(watch).status == SERVING
        codes = server.servicer.metrics.summary()["methods"]["Watch"]["codes"]
        watch.cancel()
    assert codes == {"OK": 1}
