"""An address where nothing listens, for the commands that must fail before or at connecting."""

from __future__ import annotations

import atexit
import socket

_HELD: list[socket.socket] = []
"""The sockets behind the addresses given out, bound and never listening, open until the tests end. A
port released at once was free for any other process's server (a parallel test run's, asking for a
free port) to listen on before the command connected."""
atexit.register(lambda: [held.close() for held in _HELD])


def closed_address() -> str:
    """``127.0.0.1:<port>`` of a port bound and held without listening: a connection there is refused,
    and no other socket can take the port while the tests run."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    _HELD.append(held)
    return f"127.0.0.1:{held.getsockname()[1]}"
