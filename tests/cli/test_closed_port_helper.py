"""The tests' closed address (tests/helpers/closed_port.py): refused, and its port not free for others."""

from __future__ import annotations

import errno
import socket

import pytest
from closed_port import closed_address


def test_a_closed_address_refuses_connections_and_no_other_socket_can_take_its_port():
    """The port was bound and released at once: a server another process started meanwhile (a parallel
    test run's, on a free port) could listen there, and the command expected to find nothing would connect."""
    host, _, port = closed_address().rpartition(":")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=5).close()
    with socket.socket() as other, pytest.raises(OSError) as info:
        other.bind((host, int(port)))
    assert info.value.errno == errno.EADDRINUSE
