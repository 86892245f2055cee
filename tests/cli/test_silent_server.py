"""A call that runs out of time says why it most likely did: `flowrl query --timeout 2` against a port whose
listener takes the connection and never speaks (or a firewall that drops packets) ended in a bare
'DEADLINE_EXCEEDED: Deadline Exceeded', the same words as a live server too slow to answer."""

from __future__ import annotations

import socket
import threading
import time
from concurrent import futures

import grpc
import pytest
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.connection import silent_hint

runner = CliRunner()
QUERY = ["query", "--obs", "[0.1, 0.2, 0.3]"]


@pytest.fixture
def silent_listener():
    """A TCP port that accepts connections and never sends a byte."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.1)
        accepted: list[socket.socket] = []
        done = threading.Event()

        def accept() -> None:
            while not done.is_set():
                try:
                    accepted.append(listener.accept()[0])
                except TimeoutError:
                    continue

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        yield f"127.0.0.1:{listener.getsockname()[1]}"
        done.set()
        thread.join()
        for connection in accepted:
            connection.close()


class _Slow(grpc.GenericRpcHandler):
    """Every method answers after 5 s: a gRPC server that is up but too slow for the caller's timeout."""

    def service(self, handler_call_details):
        return grpc.unary_unary_rpc_method_handler(lambda request, context: time.sleep(5) or b"")


@pytest.fixture
def slow_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((_Slow(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=0)


def test_a_listener_that_never_speaks_is_named_within_the_timeout(silent_listener):
    started = time.monotonic()
    result = runner.invoke(app, [*QUERY, "--server", silent_listener, "--timeout", "1"])
    assert time.monotonic() - started < 10
    assert result.exit_code == 1 and "Traceback" not in result.output
    # gRPC ends such a call either way, as its deadline and its connection attempt race; each says why
    assert ("what listens there is not a gRPC server" in result.output) or (
        "UNAVAILABLE" in result.output and "before receiving SETTINGS frame" in result.output
    ), result.output
    assert "if the server uses TLS, pass --tls-ca" in result.output


def test_a_server_too_slow_to_answer_is_told_apart_from_no_connection(slow_server):
    result = runner.invoke(app, [*QUERY, "--server", slow_server, "--timeout", "1"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("error: DEADLINE_EXCEEDED"), result.output
    assert "the server took the call but gave no answer within 1 s: it may be busy; raise --timeout" in result.output
    assert "TLS" not in result.output


def test_the_silent_hint_suggests_tls_only_when_no_tls_option_was_given():
    assert silent_hint(False, 2, "", "").endswith("if the server uses TLS, pass --tls-ca")
    assert "TLS" not in silent_hint(False, 2, "ca.pem", "")
    assert "within 2.5 s" in silent_hint(True, 2.5, "", "")
