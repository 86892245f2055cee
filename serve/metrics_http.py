"""The Prometheus endpoint: ``GET /metrics`` (and ``HEAD``) over plain HTTP, in a daemon thread,
answering with a server's :class:`~flowrl_deploy.serve.metrics.Metrics` exposition; its connections
are capped (at once, and from one client address) and each request has a deadline, so that whoever
reaches the port cannot hold its threads, blind the scrapes or fill the log.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from flowrl_deploy.connection import host_port, is_loopback

if TYPE_CHECKING:  # the registry imports this module's caps, which its exposition names
    from flowrl_deploy.serve.metrics import Metrics

log = logging.getLogger("flowrl.serve")
METRICS_TIMEOUT_S = 5.0
"""A metrics connection is closed this long after it was accepted unless its request has come whole
and its reply been written (each holds a thread while open): a deadline for the whole request, not
for each read, which a client sending a header line every few seconds renewed for as long as it liked."""
METRICS_CONNECTIONS = 8
"""Metrics connections served at once (a Prometheus server scrapes over one at a time)."""
METRICS_PER_PEER = 2
"""Metrics connections served at once from one client address, so that one client cannot take all
:data:`METRICS_CONNECTIONS` (and blind every scrape for as long as it holds them)."""


class _DeadlineReader(io.RawIOBase):
    """A connection's reads, each waiting no later than ``deadline`` (``time.monotonic()``): a
    timeout per read alone let a client that trickles its request hold the connection for good."""

    def __init__(self, connection: socket.socket, deadline: float) -> None:
        super().__init__()
        self._connection = connection
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the metrics request did not come whole within its deadline")
        self._connection.settimeout(remaining)
        return self._connection.recv_into(buffer)


class _QuietHTTPServer(ThreadingHTTPServer):
    """At most :data:`METRICS_CONNECTIONS` connections at once and :data:`METRICS_PER_PEER` from
    one client address (one more is closed unanswered, counted and warned of at most once a minute),
    each closed :data:`METRICS_TIMEOUT_S` after its accept unless answered by then; and a scrape that
    fails (a client that resets its connection or times out) is no traceback on stderr: anyone who
    reaches the metrics port could otherwise hold threads, blind the scrapes or fill the log without end."""

    def __init__(self, address, handler, metrics: Metrics) -> None:
        super().__init__(address, handler)
        self._metrics = metrics
        self._lock = threading.Lock()
        self._open = 0
        self._peers: dict[str, int] = {}  # connections open, by client address
        self._deadlines: dict[socket.socket, float] = {}  # by connection, from its accept

    def process_request(self, request, client_address) -> None:
        peer = str(client_address[0])
        with self._lock:
            if self._open >= METRICS_CONNECTIONS:
                why = f"all {METRICS_CONNECTIONS} metrics connections are open (the latest refused from {peer})"
            elif self._peers.get(peer, 0) >= METRICS_PER_PEER:
                why = f"{peer} has {METRICS_PER_PEER} metrics connections open, the most from one address"
            else:
                why = ""
                self._open += 1
                self._peers[peer] = self._peers.get(peer, 0) + 1
                self._deadlines[request] = time.monotonic() + METRICS_TIMEOUT_S
        if why:
            self.shutdown_request(request)
            self._metrics.record_metrics_refused(why)
            return
        try:
            super().process_request(request, client_address)  # its thread releases the slot
        except BaseException:
            self._release(request, peer)
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request, str(client_address[0]))

    def _release(self, request, peer: str) -> None:
        with self._lock:
            self._open -= 1
            self._peers[peer] -= 1
            if not self._peers[peer]:
                del self._peers[peer]
            self._deadlines.pop(request, None)

    def deadline(self, request) -> float:
        """When ``request``'s connection must have been answered (``time.monotonic()``)."""
        with self._lock:
            return self._deadlines.get(request, time.monotonic() + METRICS_TIMEOUT_S)

    def handle_error(self, request, client_address) -> None:
        log.debug("metrics request from %s failed", client_address, exc_info=True)


class _IPv6HTTPServer(_QuietHTTPServer):
    address_family = socket.AF_INET6


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:  # a host name: resolved as IPv4, as http.server does
        return False


def start_metrics_http(metrics: Metrics, host: str, port: int) -> ThreadingHTTPServer:
    """Serve ``GET /metrics`` (and ``HEAD``) in a daemon thread on ``host`` (a name, an IPv4 or an IPv6 address,
    bracketed or not, as ``--host`` takes it); the caller calls ``shutdown()``. A ``host`` other
    machines reach is warned of once: the endpoint takes no token and no TLS."""

    class Handler(BaseHTTPRequestHandler):
        timeout = METRICS_TIMEOUT_S  # a connection that sends nothing is dropped, not held by its thread for good
        server: _QuietHTTPServer

        def setup(self) -> None:
            super().setup()
            self._deadline = self.server.deadline(self.request)
            self.rfile.close()  # its reads, bounded by the deadline instead
            self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self._deadline))

        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)  # no body for a HEAD
                return
            body = metrics.exposition().encode()
            self.connection.settimeout(max(self._deadline - time.monotonic(), 0.1))  # the reply's writes
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_HEAD = do_GET  # uptime checkers and `curl -I`: GET's status and headers, no body (it was a 501)

        def log_message(self, format: str, *args: object) -> None:  # quiet
            return

    host = host.strip("[]")
    httpd = (_IPv6HTTPServer if _is_ipv6(host) else _QuietHTTPServer)((host, port), Handler, metrics)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="flowrl-metrics", daemon=True).start()
    if not is_loopback(host):
        log.warning(
            "metrics on %s take no token and no TLS: anyone who can reach that address reads the model's "
            "version and sha256, the release, the request counts and the limits; give --metrics-host 127.0.0.1 "
            "(it follows --host unless given) or firewall the port",
            host_port(host, httpd.server_address[1]),
        )
    return httpd
