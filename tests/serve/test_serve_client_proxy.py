"""gRPC honours grpc_proxy, https_proxy and http_proxy: every call of a PolicyClient, even to
127.0.0.1, went through the proxy they name, which read the token in clear (without TLS). A client
connects directly unless it is given ``use_proxy=True``."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from flowrl_deploy.client import PolicyClient, ServiceError


@pytest.fixture
def proxy(monkeypatch):
    """A listener named by every proxy variable; what reaches it is kept in ``received``."""
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def accept():
        try:
            connection, _ = listener.accept()
        except OSError:  # closed at the end of the test
            return
        with connection:
            connection.settimeout(5)
            try:
                received.append(connection.recv(4096))
            except OSError:
                received.append(b"")

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    address = f"http://127.0.0.1:{listener.getsockname()[1]}"
    for name in ("no_proxy", "NO_PROXY", "no_grpc_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("grpc_proxy", "https_proxy", "http_proxy"):
        monkeypatch.setenv(name, address)
    yield received
    listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone leaves it waiting on Linux)
    listener.close()
    thread.join(5)
    assert not thread.is_alive()


def test_calls_do_not_go_through_a_proxy_named_in_the_environment(server, proxy):
    with PolicyClient(server.address, token="") as client:
        assert client.act(np.zeros(3, np.float32)).shape == (2,)
    assert proxy == []


def test_a_client_told_to_use_the_proxy_goes_through_it(server, proxy):
    with PolicyClient(server.address, timeout_s=1, use_proxy=True) as client, pytest.raises(ServiceError):
        client.act(np.zeros(3, np.float32))  # the listener is no proxy: the call fails
    assert proxy and proxy[0].startswith(b"CONNECT 127.0.0.1:")
