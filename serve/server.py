"""PolicyServer, the gRPC server (health, reflection, TLS, token, metrics, reload, stop), its banner and bind checks.

In-process::

    with PolicyServer(ServeConfig("policy.onnx", port=0)).start() as server:
        client = PolicyClient(server.address)

As a process: ``flowrl serve`` runs :func:`~flowrl_deploy.serve.run.serve_forever`, which prints
its :func:`banner` once health is SERVING and stops on a signal.

A checkpoint (rather than an ONNX file) is served only with an ``export_checkpoint``
(:data:`~flowrl_deploy.serve.model.Exporter`): serve never imports the exporter, and with it torch,
itself; ``flowrl serve`` passes one.

A :class:`PolicyServer` serves once: :meth:`~PolicyServer.start` a second time, or after
:meth:`~PolicyServer.stop`, raises :class:`FlowRLError` (build a new one to serve again).

A synchronous server with a thread pool (:class:`~flowrl_deploy.serve.threads.CallThreads`): each
call runs on a pool thread (never on gRPC's I/O pollers), and with ``max_batch == 1`` inference runs
in that thread with no hand-off, which measured the lowest batch-1 latency.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from flowrl_deploy.connection import EVERY_INTERFACE, host_port, is_loopback
from flowrl_deploy.errors import FlowRLError, printable
from flowrl_deploy.onnxfile import is_onnx_path
from flowrl_deploy.proto.flowrl.v1 import policy_pb2_grpc as pb_grpc
from flowrl_deploy.serve.config import ServeConfig, check_grace
from flowrl_deploy.serve.connections import (
    connection_options,
    keepalive_options,
    open_connections,
    warn_of_file_limit,
)
from flowrl_deploy.serve.interceptors import SERVICE_NAME, SPARE_THREADS, Cap, OpenStreams, TokenInterceptor
from flowrl_deploy.serve.metrics import Metrics
from flowrl_deploy.serve.metrics_http import start_metrics_http
from flowrl_deploy.serve.model import Exporter, ServedModel
from flowrl_deploy.serve.reload import FileWatcher
from flowrl_deploy.serve.servicer import PolicyServicer
from flowrl_deploy.serve.threads import THREADS_REFUSED, CallThreads, cannot_start_threads, check_task_limits
from flowrl_deploy.tls import ServerTLS, ServerTLSFiles

log = logging.getLogger("flowrl.serve")


def connectable(host: str, port: int) -> str:
    """``host:port`` as a client on this machine reaches a server bound to ``host`` (bare or
    bracketed): every interface → loopback, any other host as it is."""
    return host_port(EVERY_INTERFACE.get(host.strip("[]"), host), port)


BANNER = re.compile(r"serving (?P<version>\S+) \(N=\d+ flow steps\) on (?P<host>\S+):(?P<port>\d+)(, metrics on \S+)?")


def banner(server: PolicyServer) -> str:
    """The line ``flowrl serve`` prints once serving (:func:`parse_banner` reads it back):
    ``serving <version> (N=<steps> flow steps) on HOST:PORT``, with ``, metrics on HOST:PORT``
    when metrics are served."""
    model = server.servicer.model
    metrics = f", metrics on {server.metrics_address}" if server.metrics_address is not None else ""
    return f"serving {model.version} (N={model.contract.flow_steps} flow steps) on {server.bound_address}{metrics}"


def parse_banner(line: str) -> tuple[str, str]:
    """The served version and the address to connect to (:func:`connectable`) of a :func:`banner`."""
    match = BANNER.fullmatch(line.strip())
    if match is None:
        raise FlowRLError(f"not the start-up line of flowrl serve: {line.strip()!r}")
    return match["version"], connectable(match["host"], int(match["port"]))


BIND_REASONS = {
    errno.EADDRINUSE: "address already in use (another server? give another {flag}, or {flag} 0 for a free one)",
    errno.EADDRNOTAVAIL: "no interface of this machine has that address (give one of its addresses, or 0.0.0.0)",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
}
LISTENERS = {"--port": "cannot listen on", "--metrics-port": "cannot serve metrics on"}
"""How a refusal of :func:`check_can_listen` begins, by the flag that gave the port."""


def check_can_listen(host: str, port: int, flag: str = "--port") -> None:
    """Refuse, naming the reason, an address gRPC (``--port``) or the metrics server
    (``--metrics-port``) could not listen on: gRPC logs a C-core line and says only "Failed to bind
    ...; set GRPC_VERBOSITY=debug". A plain socket is bound (not listened on) and closed at once,
    with SO_REUSEADDR as gRPC sets it (a port left in TIME_WAIT is free) and without SO_REUSEPORT,
    which the server turns off (a port another server holds is not free). One address of the host
    that binds is enough, as for gRPC (``localhost`` on a machine without IPv6)."""
    cannot = f"{LISTENERS[flag]} {host_port(host, port)}"
    try:
        addresses = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise FlowRLError(f"{cannot}: cannot resolve host {host!r} ({exc.strerror})") from None
    except UnicodeError:  # an empty or over-long label (x..y): the IDNA codec refuses it
        raise FlowRLError(f"{cannot}: {host!r} is not a valid host name") from None
    failures: list[OSError] = []
    for family, kind, proto, _, address in addresses:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
                return
        except OSError as exc:
            if exc.errno != errno.EAFNOSUPPORT:  # no IPv6 in this kernel: gRPC falls back, so let it try
                failures.append(exc)
    if failures:
        exc = failures[0]
        reason = BIND_REASONS[exc.errno].format(flag=flag) if exc.errno in BIND_REASONS else exc.strerror or exc
        raise FlowRLError(f"{cannot}: {reason}")


def _certificate_configuration(files: ServerTLS) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(files.key, files.cert)], root_certificates=files.client_ca)


def server_tls_files(config: ServeConfig) -> ServerTLSFiles | None:
    """The server's TLS (and mTLS with ``client_ca``) files, read and checked, or None for plaintext."""
    if not (config.tls_cert or config.tls_key or config.client_ca):
        return None
    if not (config.tls_cert and config.tls_key):
        raise FlowRLError("TLS needs both --tls-cert and --tls-key")
    return ServerTLSFiles(config.tls_cert, config.tls_key, config.client_ca)


def server_credentials(files: ServerTLSFiles, metrics: Metrics | None = None) -> grpc.ServerCredentials:
    """TLS credentials of ``files`` (:func:`server_tls_files`), read again when they change: gRPC
    asks on each new connection's handshake, and connections already open keep theirs. ``metrics``
    counts the changes, exports the expiries of the chain and the client CA, and at each scrape
    checks the certificate's expiry."""
    if metrics is not None:

        def figures() -> tuple[int, int, datetime.datetime | None, dict[str, datetime.datetime | None]]:
            files.check_expiry()
            loaded = files.loaded
            return files.rotations, files.refusals, loaded.expires, loaded.expiries

        metrics.tls = figures

    def fetch() -> grpc.ServerCertificateConfiguration | None:  # never raises: gRPC would fail the handshake
        changed = files.changed()
        return None if changed is None else _certificate_configuration(changed)

    return grpc.dynamic_ssl_server_credentials(
        _certificate_configuration(files.loaded), fetch, require_client_authentication="--client-ca" in files.paths
    )


def _warn_of_open_access(config: ServeConfig, tls: bool, address: str) -> None:
    """Warn of a network address that anyone who reaches it may call, or whose token travels in clear."""
    if not config.token and not config.client_ca:
        who = "with neither --token nor TLS" if not tls else "with TLS but neither --token nor --client-ca"
        log.warning(
            "listening on %s %s: anyone who can reach it on the network can call it (Act, Reload); give --token "
            "(and --tls-cert/--tls-key), or listen on 127.0.0.1",
            address,
            who,
        )
    elif config.token and not tls:
        log.warning(
            "listening on %s with --token but no TLS: the token crosses the network in clear text, for anyone on "
            "the path to read; give --tls-cert/--tls-key too",
            address,
        )


class KnownServicesHealth(health.HealthServicer):
    """grpc's health service, whose Watch follows the services this server has (``""`` and the policy
    service) and answers another name SERVICE_UNKNOWN once, then ends: grpc's kept each name a Watch
    asked for, as a key of its own, for good, so that Watches of ever new names (needing no token,
    even with ``--token``) grew the server's memory without bound.

    With ``metrics``, each Check it answers is counted and timed (``method="Check"``, code OK, or
    NOT_FOUND for a service it does not know), and each Watch counted once, OK, when its first reply
    is sent: only the calls refused at the health caps (counted where they are refused) were counted,
    so that probe traffic and the share of it refused could not be seen."""

    KNOWN = frozenset({"", SERVICE_NAME})

    def __init__(self, metrics: Metrics | None = None) -> None:
        super().__init__()
        self._metrics = metrics

    def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        start = time.perf_counter()
        reply = super().Check(request, context)
        if self._metrics is not None:
            code = context.code() or grpc.StatusCode.OK
            self._metrics.record("Check", code.name, time.perf_counter() - start)
        return reply

    def Watch(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.ServicerContext,
        send_response_callback: Callable[[health_pb2.HealthCheckResponse], None] | None = None,
    ) -> Iterator[health_pb2.HealthCheckResponse] | None:
        if request.service in self.KNOWN:
            replies = super().Watch(request, context, send_response_callback)
            if send_response_callback is not None:  # the non-blocking form: no reply iterator to follow
                return replies
        else:  # the blocking form (a reply iterator), the one OpenStreams' wrapper calls: one reply, then the end
            replies = iter([health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)])
        return replies if self._metrics is None else self._counted(replies)

    def _counted(self, replies: Iterator[health_pb2.HealthCheckResponse]) -> Iterator[health_pb2.HealthCheckResponse]:
        counted = False
        for reply in replies:
            if not counted:
                counted = True
                self._metrics.record_untimed("Watch", "OK")
            yield reply


STOP_MARGIN_S = 1.0
"""How long past the grace period :meth:`PolicyServer.stop` waits for gRPC's own stop, then returns,
abandoning the calls still in flight (gRPC cancels them in the background)."""


class PolicyServer:
    """One served policy; :meth:`start` returns once health is SERVING (or raises). A server
    starts once: a second :meth:`start`, or one after :meth:`stop`, raises :class:`FlowRLError`."""

    def __init__(
        self, config: ServeConfig, export_checkpoint: Exporter | None = None, *, process_settings_applied: bool = False
    ) -> None:
        """``process_settings_applied``: the caller applies ``config.cpus`` and ``rt_priority`` to the
        process itself (as :func:`~flowrl_deploy.serve.run.serve_forever` does), so :meth:`start`
        does not log that it leaves them alone."""
        self.config = config
        self.servicer = PolicyServicer(config, export_checkpoint)
        self.health = KnownServicesHealth(self.servicer.metrics)
        self._server: grpc.Server | None = None
        self._streams = OpenStreams(config.workers, self._refused, self._undecodable)
        self.servicer.metrics.limits = self._limits
        self.servicer.metrics.model_labels = self._model_labels
        self.servicer.metrics.serving = lambda: self._serving
        if config.max_batch > 1:  # its queue (flowrl_batch_queue_depth, flowrl_batch_wait_seconds)
            self.servicer.metrics.batch_queue = self.servicer.batcher.depth
            self.servicer.batcher.on_wait = self.servicer.metrics.record_batch_wait
        self._serving = False
        self._labelled: tuple[ServedModel, dict[str, str]] | None = None
        self._stopped = False
        self.abandoned = 0
        """Calls still in flight when :meth:`stop` returned: their handler threads run on."""
        self._cut_short = False  # cut_stop_short() was called: the stop cancels the calls in flight now
        self._metrics_http = None
        self._watcher: FileWatcher | None = None
        self._tls_files: ServerTLSFiles | None = None
        self._process_settings_applied = process_settings_applied
        self.failure: str | None = None
        """Why the server cannot serve on, once a call thread could not start (:meth:`alive` is then False)."""
        self._serving_thread: threading.Thread | None = None
        self.port = 0
        self.metrics_port: int | None = None

    def _refused(self, method: str, cap: Cap) -> None:
        self.servicer.metrics.record_untimed(method, cap.code.name)
        self.servicer.metrics.record_limit(cap.limit, self._streams.refusal_warning(cap))

    def _undecodable(self, method: str, what: str, peer: str) -> None:
        """A request whose bytes are no ``what`` (a message type, and why bytes may not parse as it):
        counted (INVALID_ARGUMENT), and warned of at most once a minute (health's Check takes no token,
        so anyone could otherwise fill the log)."""
        self.servicer.metrics.record_untimed(method, "INVALID_ARGUMENT")
        if (more := self.servicer.metrics.held_back_note("undecodable request")) is not None:
            log.warning("refused a request to %s from %s: its bytes are no %s%s", method, peer, what, more)

    def _model_labels(self) -> dict[str, str] | None:
        """``flowrl_model_info``'s labels of the served model (None before it is loaded): its version,
        and what names its bytes alike on every server (a fleet's skew alert counts these)."""
        model = self.servicer.model
        labelled = self._labelled
        if model is None:
            return None
        if labelled is None or labelled[0] is not model:
            labels = {
                "version": model.version,
                "sha256": model.sha256[:12],
                "contract_hash": model.contract.hash(),
                "flow_steps": str(model.contract.flow_steps),
                "providers": ",".join(model.policy.session.get_providers()),
            }
            labelled = self._labelled = (model, labels)
        return labelled[1]

    def _limits(self) -> dict[str, tuple[int, int]]:
        limits = {**self._streams.usage(), "sessions": (self.servicer.sessions.count(), self.config.max_sessions)}
        connections = open_connections(self.port) if self.port else None  # None: not Linux
        if connections is not None:
            limits["connections"] = (connections, self.config.max_connections)
        return limits

    @property
    def starting(self) -> bool:
        """Whether the server has neither reported SERVING yet nor begun to stop (a :meth:`start` in
        progress may still be stopped before it serves)."""
        return not self._serving and not self._stopped

    @property
    def address(self) -> str:
        """Where a client on this machine connects (``0.0.0.0`` becomes 127.0.0.1, ``::`` ::1)."""
        return connectable(self.config.host, self.port)

    @property
    def bound_address(self) -> str:
        """The address the server listens on, as bound: ``--host`` and the real port."""
        return host_port(self.config.host, self.port)

    @property
    def metrics_host(self) -> str:
        """Where Prometheus metrics listen: ``--metrics-host``, else ``--host``."""
        return self.config.host if self.config.metrics_host is None else self.config.metrics_host

    @property
    def metrics_address(self) -> str | None:
        """Where Prometheus metrics are served (:attr:`metrics_host` and the real port), or None."""
        return None if self.metrics_port is None else host_port(self.metrics_host, self.metrics_port)

    def check_certificate(self) -> None:
        """Warn of the served certificate crossing its expiry warning line or expiring (nothing
        without TLS): a new connection's handshake checks too, but a fleet that holds its streams makes
        none. :func:`~flowrl_deploy.serve.run.serve_forever` calls it every
        :data:`~flowrl_deploy.serve.run.EXPIRY_CHECK_S`, and so does each metrics scrape."""
        if self._tls_files is not None:
            self._tls_files.check_expiry()

    def _set_health(self, status: int) -> None:
        self._serving = status == health_pb2.HealthCheckResponse.SERVING  # flowrl_serving
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def start(self) -> PolicyServer:
        """Bind (health NOT_SERVING), serve metrics, load and warm up the model, then report SERVING.
        Metrics are served from before the load (``flowrl_serving`` 0, no ``flowrl_model_info``), so
        that a long start-up (a checkpoint exported on the fly) is seen as one, not as a server down."""
        config = self.config  # its values were checked when it was built
        if self._stopped:
            raise FlowRLError("this PolicyServer was stopped; build a new PolicyServer to serve again")
        if self._server is not None:
            raise FlowRLError(f"this PolicyServer is already started, on {self.bound_address}")
        try:  # from here a refusal also stops the batcher threads the servicer started
            if config.steps is not None and is_onnx_path(config.model):
                raise FlowRLError(
                    f"--steps applies to a checkpoint (exported on the fly); {config.model} is an ONNX file, "
                    "whose flow steps were fixed by `flowrl export --steps`: export it again, or serve the checkpoint"
                )
            self._tls_files = server_tls_files(config)
            credentials = (
                None if self._tls_files is None else server_credentials(self._tls_files, self.servicer.metrics)
            )
            server = self._grpc_server()
            self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            check_can_listen(config.host, config.port)  # a failure up to server.start() leaves this one unstarted
            self._serve_metrics()  # refused now, not after the model has loaded
            self.port = self._bind(server, credentials)
            if not is_loopback(config.host):
                _warn_of_open_access(config, credentials is not None, self.bound_address)
            self._server = server
            self._start_grpc(server)
            check_task_limits(config)  # with gRPC's own threads running: pids.current counts them
            self._watcher = (
                self._new_watcher()
            )  # its stamp is taken now: a checkpoint saved while loading is not missed
            metrics = "" if self.metrics_address is None else f", metrics on {self.metrics_address}"
            log.info(
                "loading %s (health NOT_SERVING on %s until it is loaded and warmed up%s)",
                printable(config.model),
                self.bound_address,
                metrics,
            )
            self.servicer.slot.load()
            self.servicer.metrics.record_loaded()
            if self._watcher is not None:
                self._watcher.start()
        except BaseException as exc:
            self.stop(grace=0)
            if cannot_start_threads(exc):
                raise FlowRLError(THREADS_REFUSED.format(error=exc)) from None
            raise
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        # stop() from another thread while this loaded; checked after SERVING, so that a stop() that
        # begins after the check is the one to report NOT_SERVING
        if self._stopped:
            self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            raise FlowRLError("this PolicyServer was stopped while it started: it does not serve")
        if (config.cpus or config.rt_priority is not None) and not self._process_settings_applied:
            log.info(
                "ServeConfig cpus and rt_priority are not applied by PolicyServer.start() (the process may run other "
                "work): serve_forever applies them, or call flowrl_deploy.affinity's pin_to_cpus and set_realtime"
            )
        return self

    def _grpc_server(self) -> grpc.Server:
        """gRPC's server, not yet bound: its call threads, interceptors (the token first, then the
        caps of :class:`OpenStreams`), channel options, and the policy, health and reflection services."""
        config = self.config
        counted = self.servicer.metrics
        token = (
            [
                TokenInterceptor(
                    config.token,
                    lambda method: counted.record_untimed(method, "UNAUTHENTICATED"),
                    counted.warning_due,
                )
            ]
            if config.token
            else []
        )
        warn_of_file_limit(config.max_connections)
        threads = config.workers + SPARE_THREADS  # shared out by OpenStreams' caps
        server = grpc.server(
            CallThreads(threads, self._thread_refused),
            interceptors=[*token, self._streams],  # the token is checked first
            maximum_concurrent_rpcs=threads,  # beyond: RESOURCE_EXHAUSTED, not a silent wait
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                # replies are as large as the server makes them (a spec, stats, a batch's actions): the
                # limit is of what clients send
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),
                *keepalive_options(config.keepalive_s),
                *connection_options(config.max_connections),
            ],
        )
        pb_grpc.add_PolicyServiceServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        return server

    def _serve_metrics(self) -> None:
        """Serve Prometheus metrics on ``--metrics-port`` (nothing without one), setting :attr:`metrics_port`."""
        config = self.config
        if config.metrics_port is None:
            return
        check_can_listen(self.metrics_host, config.metrics_port, "--metrics-port")
        try:
            self._metrics_http = start_metrics_http(self.servicer.metrics, self.metrics_host, config.metrics_port)
        except OSError as exc:
            where = host_port(self.metrics_host, config.metrics_port)
            raise FlowRLError(f"cannot serve metrics on {where}: {exc.strerror or exc}") from None
        self.metrics_port = self._metrics_http.server_address[1]

    def _bind(self, server: grpc.Server, credentials: grpc.ServerCredentials | None) -> int:
        """Add ``--host:--port`` to ``server`` (TLS with ``credentials``); the port bound."""
        address = host_port(self.config.host, self.config.port)
        try:
            return (
                server.add_insecure_port(address)
                if credentials is None
                else server.add_secure_port(address, credentials)
            )
        except RuntimeError as exc:
            raise FlowRLError(f"cannot listen on {address}: {exc}") from exc

    def _start_grpc(self, server: grpc.Server) -> None:
        """Start ``server`` and note gRPC's serving thread, which accepts each call (:meth:`alive` follows it)."""
        running = set(threading.enumerate())
        server.start()
        self._serving_thread = next(
            (thread for thread in set(threading.enumerate()) - running if thread.name.endswith("(_serve)")), None
        )

    def _new_watcher(self) -> FileWatcher | None:
        """``--watch``'s watcher of the model file (None without ``--watch``), not yet started."""
        config = self.config
        if not config.watch:
            return None
        return FileWatcher(
            Path(config.model),
            self.servicer.slot.load,
            config.watch_interval_s,
            serving=lambda: self.servicer.model.version,
        )

    def _thread_refused(self, exc: BaseException) -> None:
        if self.failure is not None:
            return
        self.failure = THREADS_REFUSED.format(error=exc)
        log.error(
            "%s: with %d Python threads running, a call waits for one of them to be free, and the server can no longer "
            "answer every call",
            self.failure,
            threading.active_count(),
        )

    def alive(self) -> bool:
        """Whether the server serves: started and not stopped, every call thread it needed started
        (:attr:`failure` None) and gRPC's serving thread, which accepts each call, running."""
        return (
            self._server is not None
            and not self._stopped
            and self.failure is None
            and (self._serving_thread is None or self._serving_thread.is_alive())
        )

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let calls in flight finish (up to ``grace`` s; None: ``grace_s``), then
        release everything. An open StreamAct ends once its request in flight, if any, has its reply,
        and a health Watch once it has sent NOT_SERVING (:class:`OpenStreams`). Once no call is left
        in flight the connections are closed at once: gRPC's own stop also waits, up to the grace
        period, for each client to answer its GOAWAY, which a frozen peer (a stopped process, a cut
        cable) never does. A call that reaches the server as the stop begins, before its handler has
        started, may then be cancelled, as at the end of the grace period.

        Returns within ``grace`` + :data:`STOP_MARGIN_S` s: gRPC's stop, and its cancel of the calls
        left at the end of the grace period, wait for its server lock, which its call-accepting
        thread holds while it starts a handler thread, and with every core busy with inference
        that took up to a second per call (a 5 s grace once took 12 s). Calls still in flight then
        are logged as abandoned (:attr:`abandoned`); gRPC's stop ends them in the background, and
        their handler threads run on until their inference returns (``flowrl serve`` exits without
        waiting for them). So does a ``--watch`` reload still loading then, and the metrics
        endpoint's close."""
        grace = self.config.grace_s if grace is None else check_grace("grace", grace)
        if self._stopped:
            return
        self._stopped = True
        began = time.monotonic()
        until = began + grace + STOP_MARGIN_S
        if self._server is not None:
            self._streams.close()  # first: each Watch then ends right after the NOT_SERVING below
            self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            stopping = threading.Thread(target=self._stop_grpc, args=(self._server, grace), name="flowrl-stop")
            stopping.daemon = True  # abandoned, it must not hold the process's exit
            try:
                stopping.start()
            except RuntimeError:  # no thread can start (an address-space limit)
                with contextlib.suppress(RuntimeError):
                    # begins gRPC's shutdown (no new call, the port closed), then fails to start the
                    # thread that times the grace; gRPC's stop waits for its serving thread, which
                    # may be the one that failed to start, so nothing waits for it here
                    self._server.stop(0)
                self._stop_watcher(until)
                self.servicer.close()
            else:
                self._stop_watcher(until)  # after gRPC's stop began: the port closes at once
                until = self._join_stopping(stopping, until)  # its start alone took up to a second
            # a call gRPC cancelled at the end of the grace period runs on until its handler returns
            self._streams.wait_idle(max(0.0, until - time.monotonic()))
            self.abandoned = self._streams.in_flight()
            if self.abandoned:
                log.warning(
                    "%d calls still in flight %.1f s after the stop began were abandoned (the grace period is "
                    "%.1f s): their clients' calls fail",
                    self.abandoned,
                    time.monotonic() - began,
                    grace,
                )
                self.servicer.slot.close()  # the work folder; the rest is released once gRPC's stop ends
        else:  # a server whose start() failed before gRPC ran: its batcher threads
            self.servicer.close()
        if self._metrics_http is not None:  # its loop notices a shutdown within its 0.5 s poll
            closing = threading.Thread(target=_close_http, args=(self._metrics_http,), name="flowrl-metrics-stop")
            closing.daemon = True
            try:
                closing.start()
            except RuntimeError:  # no thread can start
                _close_http(self._metrics_http)
            else:
                closing.join(max(0.0, until - time.monotonic()))
        self._server = None

    def cut_stop_short(self) -> None:
        """End the grace period of a stop under way, or about to begin, now: the calls still in flight are
        cancelled, and a ``--watch`` reload still loading is left to finish on its own (``flowrl serve``'s
        second Ctrl-C). It only sets a flag that :meth:`stop` polls, so a signal handler may call it."""
        self._cut_short = True

    def _join_stopping(self, stopping: threading.Thread, until: float) -> float:
        """Wait for gRPC's stop (the thread ``stopping``) until ``until``; if :meth:`cut_stop_short` is
        called meanwhile, cancel the calls in flight at once and wait :data:`STOP_MARGIN_S` more at most.
        Returns when the stop's waits end: ``until``, or sooner once cut short."""
        while stopping.is_alive() and (left := until - time.monotonic()) > 0:
            if self._cut_short and self._server is not None and until > time.monotonic() + STOP_MARGIN_S:
                if in_flight := self._streams.in_flight():
                    log.warning("stop signal repeated: cancelling the %d calls still in flight", in_flight)
                with contextlib.suppress(RuntimeError):  # its thread could not start: the grace runs out instead
                    self._server.stop(0)  # gRPC's stop again, with no grace: it cancels them
                until = time.monotonic() + STOP_MARGIN_S
                continue
            stopping.join(min(left, 0.05))
        return until

    def _stop_watcher(self, until: float) -> None:
        """Stop ``--watch``, waiting for a reload in progress (a large model's load) no later than ``until``,
        nor once :meth:`cut_stop_short` is called."""
        if self._watcher is None:
            return
        while not self._watcher.stop(min(0.05, max(0.0, until - time.monotonic()))):
            if self._cut_short or time.monotonic() >= until:
                log.warning("a --watch reload still in progress at the end of the stop was left to finish on its own")
                return

    def _stop_grpc(self, server: grpc.Server, grace: float) -> None:
        """gRPC's stop with ``grace``, cut short once no call is in flight, then the servicer's
        release (batcher threads, work folder)."""
        try:
            stopped = server.stop(grace)  # no new call is accepted from here on
        except RuntimeError as exc:  # it could not start its thread that times the grace
            if not cannot_start_threads(exc):
                raise
            stopped = server.stop(None)  # its stop began; now cancel the calls in flight
        if self._streams.wait_idle(grace):
            server.stop(0)  # close the connections left open: nothing is in flight on them
        stopped.wait()
        self.servicer.close()

    def __enter__(self) -> PolicyServer:
        """Start the server unless it is started already: ``with PolicyServer(config) as server`` and
        ``with PolicyServer(config).start() as server`` both serve in the block (a stopped one raises)."""
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _close_http(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()
