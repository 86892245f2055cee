"""Metrics on a network address (``--metrics-host``, ``--host``'s by default) take no token and no
TLS: one WARNING at start names the address and what anyone reaching it reads (they were exposed
without a word while the gRPC port's open access was warned of)."""

from __future__ import annotations

import logging

import pytest
from tiny_policy import write_policy

from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.serve.metrics import Metrics
from flowrl_deploy.serve.metrics_http import start_metrics_http


def _metrics_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "metrics" in r.getMessage()]


@pytest.mark.parametrize(("host", "warned"), [("0.0.0.0", True), ("127.0.0.1", False), ("localhost", False)])
def test_metrics_on_a_network_address_are_warned_of_once(caplog, host, warned):
    with caplog.at_level(logging.WARNING, logger="flowrl.serve"):
        httpd = start_metrics_http(Metrics(sessions=lambda: 0, version=lambda: "v1-test"), host, 0)
    try:
        warnings = _metrics_warnings(caplog)
        if warned:
            (warning,) = warnings
            assert f"{host}:{httpd.server_address[1]}" in warning
            assert "no token and no TLS" in warning and "--metrics-host 127.0.0.1" in warning
        else:
            assert not warnings
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_bracketed_ipv6_host_is_named_once_bracketed(caplog):
    """The warning built its own host:port and bracketed "[::]" again ("[[::]]:PORT")."""
    try:
        with caplog.at_level(logging.WARNING, logger="flowrl.serve"):
            httpd = start_metrics_http(Metrics(sessions=lambda: 0, version=lambda: "v1-test"), "[::]", 0)
    except OSError as exc:  # no IPv6 on this machine
        pytest.skip(f"cannot bind [::]: {exc}")
    try:
        (warning,) = _metrics_warnings(caplog)
        assert f"metrics on [::]:{httpd.server_address[1]} take" in warning, warning
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(
    ("host", "metrics_host", "warned"),
    [("0.0.0.0", None, True), ("127.0.0.1", "0.0.0.0", True), ("0.0.0.0", "127.0.0.1", False)],
)
def test_a_server_warns_of_its_metrics_on_the_network_whether_they_follow_host_or_not(
    tmp_path, caplog, host, metrics_host, warned
):
    config = ServeConfig(
        str(write_policy(tmp_path / "policy.onnx")),
        host=host,
        port=0,
        token="s3cret",
        metrics_port=0,
        metrics_host=metrics_host,
        grace_s=0,
    )
    with caplog.at_level(logging.WARNING, logger="flowrl.serve"), PolicyServer(config).start() as server:
        address = server.metrics_address
    assert len(_metrics_warnings(caplog)) == warned
    if warned:
        assert address in _metrics_warnings(caplog)[0]
