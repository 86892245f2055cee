"""The server's connection options: the cap, handshake and idle timeouts, keepalive, and the file limit."""

from __future__ import annotations

import functools
import logging
import os
import socket

from flowrl_deploy.serve.metrics import PROC_SELF

try:
    import resource  # POSIX only
except ImportError:  # Windows: its sockets are not counted against a descriptor limit
    resource = None  # type: ignore[assignment]

log = logging.getLogger("flowrl.serve")


HANDSHAKE_TIMEOUT_S = 10.0
"""A connection that has not begun HTTP/2 (and TLS) this long after it was accepted is closed
(with gRPC's default, silent TCP connections held the server's file descriptors for tens of seconds)."""
CONNECTION_IDLE_S = 1800.0
"""A connection with no call in flight this long is closed (GOAWAY; its client reconnects on its
next call; gRPC closes it between once and about twice this long): gRPC kept one for ever, its
client answering the keepalive pings. An open stream, a robot's StreamAct between two requests
included, is a call in flight; a client's keepalive pings are not (measured: pings every 5 s, a 6 s
idle limit, closed after 11 s). Half an hour, not 5 minutes: the close is for the descriptors of
silent peers, which ``--max-connections`` bounds already, and each close costs a client making
sporadic calls a reconnect and, in a program that uses the client as a library, one gRPC INFO line
on stderr ('Got goaway … connection idle'; ``GRPC_VERBOSITY=ERROR`` silences it)."""


def connection_options(max_connections: int) -> list[tuple[str, int]]:
    """gRPC server options bounding the connections: at most ``max_connections`` at once, each
    closed after :data:`HANDSHAKE_TIMEOUT_S` without HTTP/2 or :data:`CONNECTION_IDLE_S` without a call."""
    return [
        ("grpc.max_allowed_incoming_connections", max_connections),
        ("grpc.server_handshake_timeout_ms", round(HANDSHAKE_TIMEOUT_S * 1000)),
        ("grpc.max_connection_idle_ms", round(CONNECTION_IDLE_S * 1000)),
    ]


@functools.cache
def _libc():
    """ctypes and the C library, for getsockname, getpeername and getsockopt (None where they cannot load)."""
    try:
        import ctypes

        return ctypes, ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):
        return None


_ADDRESS_SIZE = 128  # sizeof(struct sockaddr_storage)


def open_connections(port: int, proc: str = PROC_SELF) -> int | None:
    """Connections open to the server on ``port``: this process's connected TCP sockets (among
    ``proc``/fd) whose local port is ``port``, its listener left out; those whose client has closed
    its end count until gRPC closes its own, as ``--max-connections`` counts them. None where
    ``proc`` cannot tell (not Linux): gRPC itself says nothing of its connections.

    Each descriptor's addresses are read in place with getsockname and getpeername, costing a few
    system calls per descriptor of this process. Not from /proc/net/tcp, whose kernel walks the
    host's whole TCP hash table (about 10 ms of CPU per scrape on a VM with 262,144 buckets); and not
    through a Python socket made over the descriptor or a dup of it, which turns the socket
    non-blocking when ``socket.setdefaulttimeout`` is set and, for a dup, keeps a socket gRPC is
    closing in gRPC's epoll set until the dup is closed."""
    try:
        names = os.listdir(os.path.join(proc, "fd"))
    except OSError:
        return None
    loaded = _libc()
    if loaded is None:
        return None
    ctypes, libc = loaded
    address = ctypes.create_string_buffer(_ADDRESS_SIZE)
    size = ctypes.c_uint32()
    kind = ctypes.c_int()
    kind_size = ctypes.c_uint32(ctypes.sizeof(kind))
    count = 0
    for name in names:
        fd = int(name)
        size.value = _ADDRESS_SIZE
        if libc.getsockname(fd, address, ctypes.byref(size)) != 0:  # not a socket, or closed meanwhile
            continue
        family = ctypes.c_ushort.from_buffer(address).value
        if family not in (socket.AF_INET, socket.AF_INET6) or int.from_bytes(address.raw[2:4], "big") != port:
            continue
        kind_size.value = ctypes.sizeof(kind)
        if libc.getsockopt(fd, socket.SOL_SOCKET, socket.SO_TYPE, ctypes.byref(kind), ctypes.byref(kind_size)) != 0:
            continue
        size.value = _ADDRESS_SIZE
        if kind.value == socket.SOCK_STREAM and libc.getpeername(fd, address, ctypes.byref(size)) == 0:
            count += 1  # a listener has no peer (ENOTCONN)
    return count


OWN_FILES = 64
"""File descriptors the server keeps for itself besides its connections (the listening sockets,
gRPC's epoll and wake-up fds, the model file, the metrics server's, logs), counted out of ``ulimit -n``."""


def warn_of_file_limit(max_connections: int) -> None:
    """Warn when ``max_connections`` is more than the process may open (``ulimit -n`` less
    :data:`OWN_FILES`): at the limit, before the cap is reached, gRPC leaves new connections
    unaccepted (logging 'File descriptor limit reached. Retrying.') and the process can open no
    other file (a reload's model, a pipe) until connections close."""
    if resource is None:
        return
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or max_connections <= soft - OWN_FILES:
        return
    log.warning(
        "--max-connections %d is more than this process may open (ulimit -n %d, about %d of them the server's "
        "own): beyond about %d connections new ones wait unaccepted and the server can open no file (a reload "
        "fails); raise ulimit -n or lower --max-connections",
        max_connections,
        soft,
        OWN_FILES,
        max(soft - OWN_FILES, 0),
    )


MIN_CLIENT_PING_S = 5
"""Clients may ping this often, with calls in flight or none (flowrl's client pings every 10 s to
find a dead server): gRPC's default answered pings more frequent than every 5 minutes without data
with GOAWAY too_many_pings, dropping the connection."""


def keepalive_options(keepalive_s: float) -> list[tuple[str, int]]:
    """gRPC server options: ping every connection each ``keepalive_s`` and close one whose ping goes
    unanswered as long (a frozen or cut-off client held its handler thread and session for gRPC's
    default 2 h), idle connections too; take clients' pings every :data:`MIN_CLIENT_PING_S`, with
    or without calls, and with no data between them."""
    interval_ms = round(keepalive_s * 1000)
    return [
        ("grpc.keepalive_time_ms", interval_ms),
        ("grpc.keepalive_timeout_ms", interval_ms),
        ("grpc.http2.ping_timeout_ms", interval_ms),  # any ping: a keepalive may ride on a pending one
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),  # else the server's own pings stop after 2 without data
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_S * 1000),  # received pings
        ("grpc.http2.max_ping_strikes", 2),  # gRPC's default: a client pinging faster is still sent away
    ]
