"""A client reaches a server over a slow link: PolicyClient's channel gave each connection attempt about
0.1 s (gRPC reads `grpc.min_reconnect_backoff_ms`, which it set to 50, as the least time an attempt may
take, clamped to 100 ms), so over a link with a round trip near 0.1 s (a VPN, TLS to a remote host, a
starved server host) its first call failed UNAVAILABLE where a plain gRPC channel connected."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
from tiny_policy import write_policy

from flowrl_deploy.client import PolicyClient
from flowrl_deploy.serve import PolicyServer, ServeConfig

DELAY_S = 0.06
"""Added by the proxy at its accept and to each chunk it forwards, either way: a connection's TCP and
HTTP/2 set-up then takes about 0.2 s."""


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            time.sleep(DELAY_S)
            target.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, target):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


def _serve_slowly(listener: socket.socket, port: int) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:  # the test closed the listener
            return
        time.sleep(DELAY_S)
        upstream = socket.create_connection(("127.0.0.1", port))
        for source, target in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(source, target), daemon=True).start()


@pytest.fixture
def slow_address(tmp_path):
    config = ServeConfig(str(write_policy(tmp_path / "policy.onnx")), port=0, grace_s=0)
    with PolicyServer(config).start() as server, socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        threading.Thread(target=_serve_slowly, args=(listener, server.port), daemon=True).start()
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def test_the_first_call_over_a_slow_link_connects(slow_address):
    for _ in range(2):  # a fresh channel each time: each makes its first connection attempt
        with PolicyClient(slow_address, timeout_s=10) as client:
            assert client.spec().obs_dim == 3
