"""An address where nothing listens, for the commands that must fail before or at connecting."""

from __future__ import annotations

import socket


def closed_address() -> str:
    """``127.0.0.1:<port>`` of a port just bound and released: nothing listens there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"
