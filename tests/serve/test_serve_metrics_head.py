"""`HEAD /metrics` (uptime checkers, `curl -I`): GET's status and headers, no body; it answered 501."""

from __future__ import annotations

import http.client

import pytest

from flowrl_deploy.serve.metrics import Metrics
from flowrl_deploy.serve.metrics_http import start_metrics_http


@pytest.fixture
def endpoint():
    httpd = start_metrics_http(Metrics(sessions=lambda: 0, version=lambda: "v1-test"), "127.0.0.1", 0)
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def _ask(port: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path)
        reply = connection.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        connection.close()


@pytest.mark.parametrize("path", ["/metrics", "/", "/metrics?name[]=x"])
def test_head_answers_gets_status_and_headers_without_a_body(endpoint, path):
    status, headers, body = _ask(endpoint, "GET", path)
    head_status, head_headers, head_body = _ask(endpoint, "HEAD", path)
    assert (status, head_status) == (200, 200) and body and head_body == b""
    assert head_headers["content-type"] == headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert abs(int(head_headers["content-length"]) - len(body)) < 200  # the counters move between the two asks


def test_head_of_another_path_is_404_as_get_is(endpoint):
    assert _ask(endpoint, "HEAD", "/x")[0] == _ask(endpoint, "GET", "/x")[0] == 404
    assert _ask(endpoint, "HEAD", "/x")[2] == b""
