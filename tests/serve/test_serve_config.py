"""ServeConfig checks every setting when it is built, as `flowrl serve` does; a PolicyServer serves once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fake_checkpoints import save_step
from tiny_policy import write_policy

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.serve.model import ModelSlot

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        # a hang: stop() never returned with a stream open, and gRPC printed an OverflowError
        ({"grace_s": INF}, "--grace-s must lie in [0, 86400] s, got inf"),
        ({"grace_s": NAN}, "--grace-s must lie in [0, 86400] s, got nan"),
        ({"grace_s": -1}, "--grace-s must lie in [0, 86400] s, got -1"),
        # bare errors from concurrent.futures, gRPC, pybind11, the batcher
        ({"workers": 0}, "--workers must be >= 1, got 0"),
        ({"max_message_bytes": 2**40}, "--max-message-bytes must lie in [1, 2147483647] (gRPC's limit)"),
        ({"threads": 1.5}, "--threads must be an integer, got 1.5"),
        ({"port": "0"}, "--port must be an integer, got '0'"),
        ({"port": True}, "--port must be an integer, got True"),
        ({"max_batch": 0}, "--max-batch must be >= 1, got 0"),
        ({"max_batch": 5000}, "--max-batch must be at most 4096"),
        ({"batch_window_us": -1}, "--batch-window-us must lie in [0, 1000000] µs"),
        ({"port": 70000}, "--port must lie in [0, 65535] (0: a free port), got 70000"),
        ({"metrics_port": -5}, "--metrics-port must lie in [0, 65535]"),
        # refused only after the model had loaded, as "cannot serve metrics on …: Address already in use"
        ({"port": 9100, "metrics_port": 9100}, "--metrics-port must differ from --port, got 9100 for both"),
        ({"steps": 0}, "--steps must lie in [1, 1000], got 0"),
        ({"threads": 100000}, "--threads 100000 is more than this machine can run"),
        # the file watcher busy-looped on a full core
        ({"watch_interval_s": 0}, "watch_interval_s must lie in [0.01, 86400] s, got 0"),
        ({"watch_interval_s": -1}, "watch_interval_s must lie in [0.01, 86400] s, got -1"),
        ({"watch_interval_s": NAN}, "watch_interval_s must lie in [0.01, 86400] s, got nan"),
        # a server that refused every call
        ({"max_message_bytes": 0}, "--max-message-bytes must lie in [1, 2147483647]"),
        ({"max_message_bytes": -1}, "--max-message-bytes must lie in [1, 2147483647]"),
        ({"max_request_batch": 0}, "max_request_batch must be >= 1, got 0"),
        ({"max_sessions": 0}, "--max-sessions must be >= 1, got 0"),
        ({"session_idle_s": -1}, "--session-idle-s must be > 0 and finite, got -1"),
        ({"session_idle_s": INF}, "--session-idle-s must be > 0 and finite, got inf"),
        ({"watch": "yes"}, "--watch must be true or false, got 'yes'"),
        ({"token": None}, "--token must be a string, got None"),
        # the client then failed every call with INTERNAL: Invalid metadata (checked_token, shared with it)
        ({"token": "tok123\r"}, "--token ends with a newline (\\r or \\n): a token read from a file keeps it"),
        ({"token": "pässwörd"}, "--token holds a non-ASCII character at position 2"),
        ({"token": "tok 123 "}, "--token begins or ends with whitespace"),
        ({"metrics_port": "9100"}, "--metrics-port must be an integer or None, got '9100'"),
        # a string of providers was taken letter by letter
        ({"providers": "CPUExecutionProvider"}, "--providers must be a list, got 'CPUExecutionProvider'"),
        # gRPC's own "host must not be empty" log line and "Failed to bind", after our checks passed
        ({"host": ""}, "--host must name an interface, got '': 0.0.0.0 for every one, 127.0.0.1 for this machine"),
        ({"host": "[]"}, "--host must name an interface, got '[]'"),
        # NumPy scalars are checked as their Python values
        ({"port": np.float64(50051.0)}, "--port must be an integer, got 50051.0"),
        ({"port": np.True_}, "--port must be an integer, got True"),
        ({"max_batch": np.int64(0)}, "--max-batch must be >= 1, got 0"),
    ],
)
def test_a_setting_the_server_cannot_run_with_is_refused_when_the_config_is_built(setting, message):
    with pytest.raises(FlowRLError) as info:
        ServeConfig("policy.onnx", **setting)
    assert message in str(info.value)


def test_the_bounds_themselves_are_accepted():
    ServeConfig("policy.onnx", port=65535, metrics_port=0, max_batch=4096, batch_window_us=1_000_000, grace_s=0)
    ServeConfig("policy.onnx", max_message_bytes=2**31 - 1, watch_interval_s=0.01, session_idle_s=0.2, steps=1000)


def test_numpy_scalars_are_taken_as_their_python_values():
    config = ServeConfig("policy.onnx", port=np.int64(50051), grace_s=np.float32(0.5), watch=np.True_)
    assert (config.port, config.grace_s, config.watch) == (50051, 0.5, True)
    assert (type(config.port), type(config.grace_s), type(config.watch)) == (int, float, bool)


def test_a_path_is_taken_as_a_string_and_a_list_as_a_tuple():
    config = ServeConfig(Path("policy.onnx"), providers=["CPUExecutionProvider"], cpus=[0], tls_cert=Path("c.pem"))
    assert (config.model, config.providers, config.cpus, config.tls_cert) == (
        "policy.onnx",
        ("CPUExecutionProvider",),
        (0,),
        "c.pem",
    )


@pytest.fixture
def server(tmp_path):
    server = PolicyServer(ServeConfig(str(write_policy(tmp_path / "policy.onnx")), port=0, grace_s=0))
    yield server
    server.stop()


def test_a_server_starts_once(server):
    """A second start() bound a second port and orphaned the first server; a start() after stop()
    ran against the temporary directory stop() had deleted."""
    server.start()
    first = server.port
    with pytest.raises(FlowRLError, match=rf"already started, on 127\.0\.0\.1:{first}"):
        server.start()
    assert server.port == first
    server.stop()
    with pytest.raises(FlowRLError, match="was stopped; build a new PolicyServer"):
        server.start()


def test_stop_refuses_a_grace_period_it_could_not_wait(server):
    server.start()
    with pytest.raises(FlowRLError, match="grace must lie in"):
        server.stop(grace=INF)
    server.stop(grace=0)


def _garbage_exporter(checkpoint: Path, out: Path, steps: int | None) -> Path:
    """An export that writes what the server then cannot load."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"not an ONNX model")
    return out


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"port": "taken"}, "address already in use"),
        ({"tls_cert": "x.pem"}, "TLS needs both --tls-cert and --tls-key"),
        ({"steps": 3}, "--steps applies to a checkpoint"),
        ({"model": "garbage"}, "cannot load ONNX model"),  # refused after gRPC bound its port and started
        ({"model": "checkpoint"}, "cannot load ONNX model"),  # its export made the work folder
    ],
)
def test_a_refused_start_leaves_no_thread_or_folder_behind(tmp_path, setting, message):
    """A start() refused before gRPC ran (its settings, the port) left the batcher's threads, which
    the servicer starts when the server is built, and the work folder behind until stop(); one refused
    after (the model) also left gRPC serving on its port."""
    import socket
    import threading

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if setting.get("port") == "taken":
            setting = {"port": taken.getsockname()[1]}
        if setting.get("model") == "garbage":
            (tmp_path / "garbage.onnx").write_bytes(b"not an ONNX model")
            setting = {"model": str(tmp_path / "garbage.onnx")}
        exported = setting.get("model") == "checkpoint"
        if exported:
            setting = {"model": str(save_step(tmp_path / "run", 1))}
        settings = {"model": str(write_policy(tmp_path / "policy.onnx")), "port": 0, **setting}
        config = ServeConfig(**settings, max_batch=4, batch_workers=2, grace_s=0)
        before = set(threading.enumerate())
        server = PolicyServer(config, export_checkpoint=_garbage_exporter)
        batchers = [t for t in set(threading.enumerate()) - before if t.name.startswith("flowrl-batcher")]
        assert len(batchers) == 2  # this server's own, not those of a server another test left running
        with pytest.raises(FlowRLError, match=message):
            server.start()
    for thread in batchers:
        thread.join(timeout=10)
    assert not any(t.is_alive() for t in batchers)
    folder = server.servicer.slot.work_folder
    assert (folder is not None) == exported  # only a checkpoint's export makes one
    assert folder is None or not folder.exists()  # removed by the stop that followed the refusal
    if server.port:  # a port gRPC had bound is free again
        with socket.socket() as again:
            again.bind(("127.0.0.1", server.port))


def test_a_metrics_port_in_use_is_refused_before_the_model_is_loaded(tmp_path, monkeypatch):
    """It was bound only once the model had loaded (a checkpoint exported, minutes on a big one) and
    gRPC had started, then refused as "cannot serve metrics on …: Address already in use"."""
    import socket

    loads: list[object] = []
    monkeypatch.setattr(ModelSlot, "load", lambda self, *args, **kwargs: loads.append(args))
    path = write_policy(tmp_path / "policy.onnx")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = PolicyServer(ServeConfig(str(path), port=0, metrics_port=port, grace_s=0))
        with pytest.raises(FlowRLError) as info:
            server.start()
    assert str(info.value) == (
        f"cannot serve metrics on 127.0.0.1:{port}: address already in use "
        "(another server? give another --metrics-port, or --metrics-port 0 for a free one)"
    )
    assert loads == []
