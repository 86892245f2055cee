"""serve_forever: a PolicyServer as the process's main loop, with stop signals and systemd's readiness and watchdog.

``flowrl serve policy.onnx --port 0`` runs it and prints its :func:`~flowrl_deploy.serve.server.banner`
once health is SERVING; SIGTERM, SIGINT or SIGHUP (unless ignored, as under ``nohup``) stops it
gracefully (exit 0).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flowrl_deploy.affinity import check_realtime, pin_to_cpus, set_realtime
from flowrl_deploy.client import HTTP_PROXY_OPTION
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.gc_freeze import gc_frozen
from flowrl_deploy.serve.config import ServeConfig
from flowrl_deploy.serve.model import Exporter
from flowrl_deploy.serve.server import PolicyServer, banner
from flowrl_deploy.signals import install_stop_handlers
from flowrl_deploy.systemd import Notifier

log = logging.getLogger("flowrl.serve")

EXPIRY_CHECK_S = 60.0
"""How often :func:`serve_forever` checks the served certificate's expiry (a warning as it crosses
:data:`~flowrl_deploy.tls.EXPIRY_WARNING_DAYS` or expires), besides each new connection's handshake."""


class ServerFailed(FlowRLError):
    """:func:`serve_forever` stopped because the server could no longer serve (a call thread could
    not start, or gRPC's serving thread died): ``flowrl serve`` exits with status 1, for a service
    manager (systemd's ``Restart=on-failure``, Kubernetes) to start it again."""


class _StoppedDuringStartUp(BaseException):
    """Raised by :func:`serve_forever`'s signal handler into :meth:`PolicyServer.start` (as Python's
    KeyboardInterrupt is), which then stops the server: a stop signal during a long start-up (a
    checkpoint exported on the fly) is not left waiting for the whole load. A BaseException, so that
    no ``except Exception`` on the way takes it for a failed load."""


class _Liveness:
    """Whether the server answers, for the watchdog: :meth:`PolicyServer.alive`, and, without TLS,
    a health Check of its own over loopback answered in time (any answer, a refusal at the health
    cap included). With TLS its client would need the server's CA (and with mTLS a certificate)."""

    def __init__(self, server: PolicyServer) -> None:
        self._server = server
        self._channel = (
            None if server.config.tls_cert else grpc.insecure_channel(server.address, options=[(HTTP_PROXY_OPTION, 0)])
        )

    def __call__(self, timeout_s: float) -> bool:
        if not self._server.alive():
            return False
        if self._channel is None:
            return True
        try:
            health_pb2_grpc.HealthStub(self._channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # answered: refused at the health cap
        return True

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()


def serve_forever(
    config: ServeConfig,
    on_ready: Callable[[PolicyServer], None] | None = None,
    export_checkpoint: Exporter | None = None,
) -> int:
    """Run until one of :data:`~flowrl_deploy.signals.STOP_SIGNALS` (but not one of
    :data:`~flowrl_deploy.signals.KEPT_IF_IGNORED` ignored at
    start), then stop gracefully; a Ctrl-C during the stop (SIGINT after any stop signal) cancels the calls
    still in flight at once (:meth:`PolicyServer.cut_stop_short`), a repeated SIGTERM or SIGHUP does not.
    Only the main thread can handle signals: from another thread it raises :class:`FlowRLError` (serve
    there with ``PolicyServer(config).start()`` and ``stop()``).

    Returns the calls abandoned at the end of the stop (:attr:`PolicyServer.abandoned`): their
    handler threads, still in their inference, hold the interpreter's exit (the thread pool joins
    its threads) unless the process leaves with ``os._exit``, as ``flowrl serve`` then does. Once
    the server can no longer serve (:meth:`PolicyServer.alive`: a call thread could not start,
    gRPC's serving thread died) it stops too, and raises :class:`ServerFailed`.

    Under systemd (``$NOTIFY_SOCKET``, :class:`~flowrl_deploy.systemd.Notifier`) it sends
    ``READY=1`` with ``STATUS=`` its :func:`banner` once serving (and warm, at its real-time
    priority), ``STOPPING=1`` when the stop begins and, with ``WatchdogSec=``, ``WATCHDOG=1`` every
    half of it while the server answers (:class:`_Liveness`), so that a hung server is restarted.

    The whole process is pinned to ``config.cpus`` and, once the model is warm, runs under
    SCHED_FIFO at ``config.rt_priority`` (:func:`~flowrl_deploy.affinity.set_realtime`);
    :meth:`PolicyServer.start` applies neither (it may share its process with other work)."""
    if threading.current_thread() is not threading.main_thread():
        raise FlowRLError(
            "serve_forever runs in the main thread only (it stops on signals, which only the main thread "
            "receives); to serve from another thread, use PolicyServer(config).start() and .stop()"
        )
    pin_to_cpus(config.cpus)
    if config.rt_priority is not None:  # refused now, not after the model has loaded
        check_realtime(config.rt_priority)
    notifier = Notifier()
    # The handler takes no lock: Event.set() in a handler deadlocked when the signal arrived while
    # this thread held the Event's lock (inside its own wait, or a first handler's set()).
    signals: list[int] = []
    starting: list[bool] = []  # [True] while start() runs and may be interrupted

    server: PolicyServer | None = None  # before the handlers are installed: one may run at once

    def stop_signal(sig: int, _: FrameType | None) -> None:
        signals.append(sig)
        # A second Ctrl-C ends the grace period; a repeated SIGTERM or SIGHUP does not, as signals.py's rule
        # has it: a scheduler may deliver its stop twice (to the process, and forwarded by srun).
        if sig == signal.SIGINT and len(signals) > 1 and server is not None:
            server.cut_stop_short()
        # once only, and not once start() has reported SERVING or begun to stop the server
        if starting and server is not None and server.starting:
            starting.clear()
            raise _StoppedDuringStartUp

    restore = install_stop_handlers(stop_signal)  # an ignored SIGINT or SIGHUP stays ignored
    failure = ""
    interrupted = False  # a stop signal ended start() (which stopped the server)
    try:
        # in the try: a failure here restores the handlers
        server = PolicyServer(config, export_checkpoint, process_settings_applied=True)
        try:
            starting.append(True)
            if signals:  # one came while the server was built: its model is not loaded at all
                raise _StoppedDuringStartUp
            server.start()
        except _StoppedDuringStartUp:
            interrupted = True
        finally:
            starting.clear()
        if config.rt_priority is not None and not interrupted:  # loading and warm-up ran at the normal priority
            set_realtime(config.rt_priority)  # every thread, gRPC's and onnxruntime's included
        status = ""  # the banner systemd was last sent (none once a stop signal came)
        if not signals:  # not "serving …" after a Ctrl-C during start-up
            if on_ready is not None:
                on_ready(server)
            status = banner(server)
            notifier.send("READY=1", f"STATUS={status}")
        failure = _supervise(server, notifier, signals, status)
        _report_stop(failure, interrupted, signals, notifier)
        stopping = time.monotonic()
    finally:
        if server is not None:
            server.stop()
        restore()
    log.info("stopped in %.1f s", time.monotonic() - stopping)
    if failure:
        raise ServerFailed(failure)
    return server.abandoned


def _supervise(server: PolicyServer, notifier: Notifier, signals: list[int], status: str) -> str:
    """Watch ``server`` until a stop signal comes (``signals`` no longer empty): its liveness, its
    certificate's expiry every :data:`EXPIRY_CHECK_S`, systemd's ``STATUS=`` after a reload (``status``
    is the banner sent last) and, with ``WatchdogSec=``, ``WATCHDOG=1`` while it answers
    (:class:`_Liveness`). Returns why the server can no longer serve, or ``""`` on a stop signal."""
    watchdog_s = notifier.watchdog_s
    liveness = _Liveness(server) if watchdog_s else None
    try:
        with gc_frozen():  # the loaded libraries' objects stay out of every later garbage collection
            checked = pinged = time.monotonic()
            unanswered = False
            while not signals:
                time.sleep(0.1)
                if not server.alive():
                    return (
                        "a call thread could not start"
                        if server.failure
                        else "gRPC's serving thread stopped, and with it every new call"
                    )
                if time.monotonic() - checked >= EXPIRY_CHECK_S:
                    checked = time.monotonic()
                    server.check_certificate()
                if notifier.enabled and banner(server) != status:  # a reload
                    status = banner(server)
                    notifier.send(f"STATUS={status}")
                if liveness is not None and time.monotonic() - pinged >= watchdog_s / 2:
                    if liveness(min(watchdog_s / 4, 5.0)):
                        pinged = time.monotonic()
                        notifier.send("WATCHDOG=1")
                        unanswered = False
                    elif not unanswered and not signals:
                        unanswered = True
                        log.warning(
                            "the server did not answer its own health check within %.1f s: no WATCHDOG=1 is sent "
                            "while it does not (systemd stops it %.0f s after the last one)",
                            min(watchdog_s / 4, 5.0),
                            watchdog_s,
                        )
        return ""
    finally:
        if liveness is not None:
            liveness.close()


def log_stop_during_start_up(sig: int) -> str:
    """Log a stop ``sig`` taken during start-up, before the model was served; its name."""
    name = signal.Signals(sig).name
    log.info("stopping on %s during start-up: the model was not served", name)
    return name


def _report_stop(failure: str, interrupted: bool, signals: list[int], notifier: Notifier) -> None:
    """Log why the server stops and tell systemd (``STOPPING=1`` and ``STATUS=``): ``failure`` (the
    server could no longer serve), or the first of ``signals``, during start-up (``interrupted``) or
    while serving."""
    if failure:
        log.error(
            "stopping: %s (above); flowrl serve exits with status 1, for a service manager to restart it", failure
        )
        notifier.send("STOPPING=1", f"STATUS=stopping: {failure}")
        return
    if interrupted:
        name = log_stop_during_start_up(signals[0])
        notifier.send("STOPPING=1", f"STATUS=stopping on {name} during start-up")
    else:
        name = signal.Signals(signals[0]).name
        log.info("stopping on %s: finishing calls in flight", name)
        notifier.send("STOPPING=1", f"STATUS=stopping on {name}")
