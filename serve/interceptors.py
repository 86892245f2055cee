"""The server's interceptors: the shared-secret check (every call but health probes must carry
``authorization: Bearer <token>``), and :class:`OpenStreams`, the caps of calls in flight per kind
that also ends the open streams on stop."""

from __future__ import annotations

import collections
import functools
import hmac
import logging
import threading
import weakref
from collections.abc import Callable, Generator, Iterator
from typing import NamedTuple

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection

from flowrl_deploy.errors import printable
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
"""Kubernetes and load-balancer probes carry no secret."""

log = logging.getLogger("flowrl.serve")

Continuation = Callable[[grpc.HandlerCallDetails], "grpc.RpcMethodHandler | None"]
"""What gRPC passes an interceptor: the handler of a call's method (None: no such method)."""


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuse calls without the right token with UNAUTHENTICATED (constant-time comparison);
    ``on_refused(method)`` is told of each, with the method's short name (e.g. ``Act``). Each is
    logged with the caller's address, at most once every
    :data:`~flowrl_deploy.serve.metrics.LIMIT_WARNING_S` with the number held back
    (``warning_due``: the server's :meth:`~flowrl_deploy.serve.metrics.Metrics.warning_due`): counted alone,
    they left no trace of which robot still sent the old token after a rotation."""

    def __init__(
        self,
        token: str,
        on_refused: Callable[[str], None],
        warning_due: Callable[[str], tuple[int, float | None] | None],
    ) -> None:
        self._expected = token.encode()
        self._on_refused = on_refused
        self._warning_due = warning_due

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return handler
        sent = str(dict(handler_call_details.invocation_metadata or ()).get("authorization", ""))
        scheme, _, credentials = sent.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(credentials.encode(), self._expected):  # RFC 6750
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        self._on_refused(method)
        # request-streaming, so that nothing is read: gRPC runs a unary-request handler only once its
        # request message has come, and a call that never sent one held its thread
        streaming = "stream" if handler.response_streaming else "unary"
        deny = functools.partial(self._deny, method, "a wrong one" if sent else "none")
        return getattr(grpc, f"stream_{streaming}_rpc_method_handler")(deny)

    def _deny(self, method: str, sent: str, requests: Iterator[Message], context: grpc.ServicerContext) -> None:
        due = self._warning_due("UNAUTHENTICATED")
        if due is not None:
            held, age = due
            caller = f"{method} from {printable(context.peer())} sent {sent}"
            if held:
                log.warning(
                    "refused %d calls for their token (UNAUTHENTICATED) in the last %.0f s: the latest, %s",
                    held + 1,
                    age,
                    caller,
                )
            else:
                log.warning("refused 1 call for its token (UNAUTHENTICATED): %s", caller)
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token (send authorization: Bearer <token>)")


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PolicyService"].full_name
STREAM_ACT = f"/{SERVICE_NAME}/StreamAct"
HEALTH_WATCH = f"/{health.SERVICE_NAME}/Watch"
SERVING = health_pb2.HealthCheckResponse.SERVING
WATCH_STREAMS = 4
"""Open health Watch streams at most: each holds a handler thread for as long as it is open."""
REFLECTION_STREAMS = 2
"""Open reflection streams (grpcurl) at most, for the same reason."""
CONTROL_METHODS = tuple(f"/{SERVICE_NAME}/{name}" for name in ("GetSpec", "GetStats", "Reset", "Reload"))
"""The operator's calls, a robot's first and its new episodes' (all short): answered while the robots'
streams hold every worker (a fleet of N robots on ``--workers N`` could reset no episode)."""
CONTROL_CALLS = 4
"""Control calls in flight on threads of their own; more take idle ``--workers`` threads."""
HEALTH = f"/{health.SERVICE_NAME}/"
HEALTH_CHECKS = 2
"""Health Checks (and Lists) in flight at most, on threads of their own: a Check answers at once, but
one whose request message never comes holds its thread, and health needs no token."""
HEALTH_MESSAGE_S = 1.0
"""A health call's request message (a few bytes, sent with the call) must come within this many
seconds, or the call is cancelled: two Checks that never sent it held both health threads for as long
as their client liked, and every probe was refused (a liveness probe then restarted a healthy server)."""
SPARE_THREADS = WATCH_STREAMS + REFLECTION_STREAMS + CONTROL_CALLS + HEALTH_CHECKS
"""Handler threads beyond ``--workers``: one for each call the caps let in besides the workers', the
capped Watch and reflection streams, the control calls and the health Checks (so that a probe is
answered however busy the workers are)."""
KINDS = {  # (request streaming, response streaming): the handler's field for its behaviour
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


class Cap(NamedTuple):
    """At most ``most`` calls whose method starts with ``prefix`` (or one of them) in flight at once;
    one more is refused with ``code`` and ``refusal``, and counted by its ``limit`` (a metrics label);
    ``flag`` raises it ('': a fixed cap)."""

    prefix: str | tuple[str, ...]
    most: int
    refusal: str
    limit: str
    flag: str = ""
    code: grpc.StatusCode = grpc.StatusCode.RESOURCE_EXHAUSTED
    message_s: float | None = None
    """A unary-request call's message must come within this many seconds, or the call is cancelled
    (None: no bound, as for calls that need the token)."""

    @property
    def warning(self) -> str:
        """What the server logs of a refusal: the limit, and how to raise it."""
        return f"{self.refusal}; raise {self.flag}" if self.flag else f"{self.refusal} (a fixed cap)"


def _held(replies: Iterator[Message], returned: Callable[[], None]) -> Iterator[Message]:
    """A response-streaming handler's ``replies``; its handler has returned (``returned()``, which
    counts once) when they end, are closed, or are dropped, even never started (whose ``finally``
    never runs)."""

    def held() -> Iterator[Message]:
        try:
            yield from replies
        finally:
            returned()

    stream = held()
    weakref.finalize(stream, returned)
    return stream


class Undecodable(NamedTuple):
    """What a request deserializer of :class:`OpenStreams` gives for bytes that do not parse as its
    message: gRPC's own logged an ERROR with a traceback per such call (health's Check needs no
    token: anyone could fill a robot's disk) and answered INTERNAL, counted nowhere."""

    message: str
    """The message type the bytes should have held."""
    why: str = "bytes of another message"
    """What makes bytes no such message, as the refusal and the log say it (:func:`_undecodable_causes`)."""

    @property
    def described(self) -> str:
        """'StreamActRequest message (bytes of another message, or ...)': what the bytes are not, and why."""
        return f"{self.message} message ({self.why})"


def _undecodable_causes(message_type: object) -> str:
    """Why bytes may not parse as ``message_type``: bytes of another message, or, where it has a string
    field (its first named), one that is not valid UTF-8 (protobuf then refuses the whole message)."""
    descriptor = getattr(message_type, "DESCRIPTOR", None)
    strings = [f.name for f in getattr(descriptor, "fields", ()) if f.type == f.TYPE_STRING]
    if not strings:
        return "bytes of another message"
    return f"bytes of another message, or a string field such as {strings[0]} that is not valid UTF-8"


def _tolerant(deserializer: Callable[[bytes], Message] | None) -> Callable[[bytes], Message | Undecodable] | None:
    """``deserializer`` giving :class:`Undecodable` instead of raising."""
    if deserializer is None:
        return None
    message_type = getattr(deserializer, "__self__", None)
    refused = Undecodable(getattr(message_type, "__name__", "request"), _undecodable_causes(message_type))

    def deserialize(data: bytes) -> Message | Undecodable:
        try:
            return deserializer(data)
        except Exception:  # protobuf's DecodeError, or any other deserializer's error
            return refused

    return deserialize


def _only(
    requests: Iterator[Message], method: str, context: grpc.ServicerContext, within_s: float | None = None
) -> Message:
    """A unary method's request message, read from its call's request stream as gRPC reads it: the
    first message, any after it ignored; none is refused with gRPC's UNIMPLEMENTED. With
    ``within_s``, a message that has not come by then cancels the call (its client sees CANCELLED):
    gRPC's sync server has no read timeout, and only a cancel wakes a handler waiting for a message."""
    timer = None
    if within_s is not None:
        timer = threading.Timer(within_s, context.cancel)
        timer.daemon = True
        try:
            timer.start()
        except RuntimeError:  # no thread can start (an address-space limit): wait unbounded, as before
            timer = None
    try:
        request = next(requests, None)
    finally:
        if timer is not None:
            timer.cancel()
    if request is None:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f'"{method}" requires exactly one request message.')
    return request


class OpenStreams(grpc.ServerInterceptor):
    """Caps the calls in flight per kind, and ends the open streams on stop.

    Caps: gRPC's one limit (``maximum_concurrent_rpcs``) counts every call alike, so anyone could take
    every handler thread with health Watches, which need no token and each hold a thread while open:
    a robot's tokened Act and a kubelet's health Check were then refused ("Concurrent RPC limit
    exceeded!", counted nowhere). The pool (and gRPC's limit) is ``workers`` + :data:`SPARE_THREADS`
    threads: the policy service's calls may hold ``workers`` of them, its control calls
    (:data:`CONTROL_METHODS`) :data:`CONTROL_CALLS` more (and then idle workers), health Watches
    :data:`WATCH_STREAMS`, reflection streams :data:`REFLECTION_STREAMS` and health Checks
    :data:`HEALTH_CHECKS`, so that every call in flight has its thread. A unary call takes its slot
    before its request message is read: one whose message never comes waits in its slot, never on a
    thread of another cap's. A call over its cap is refused with RESOURCE_EXHAUSTED naming the limit, and
    ``on_refused(method, cap)`` is told of it (``method`` its short name, e.g. ``Watch``). A Watch
    over its cap is refused with UNIMPLEMENTED instead: a gRPC client with client-side health
    checking (``healthCheckConfig``) holds a Watch per connection and took RESOURCE_EXHAUSTED for an
    unhealthy server, failing every call of that connection with UNAVAILABLE; on UNIMPLEMENTED it
    gives up health checking and takes the server for healthy (gRFC A17).

    Streams: the open StreamAct calls, each idle (waiting for its next request) or busy (a request
    read, its reply not yet sent), and the open health Watch calls, so that :meth:`close` ends them
    without waiting out the grace period: gRPC's stop lets an open stream run until the grace
    period ends, and a connected robot's stream (or a gRPC client's health check, which holds a
    Watch per connection) always stayed that long. After :meth:`close` an idle stream is cancelled
    at once (its client sees CANCELLED, as it would at the end of the grace period), a busy one
    ends (status OK) as soon as its reply is sent (the request in flight is finished, no new one is
    taken), and a Watch ends (OK) once it has sent the NOT_SERVING of the stop.

    A call is counted (under its cap, and for :meth:`wait_idle`) until both gRPC has finished it (its
    status sent, or cancelled) and its handler has returned, whichever comes last: a handler may run
    on after its client cancelled, and it holds its thread until it returns."""

    def __init__(
        self,
        workers: int,
        on_refused: Callable[[str, Cap], None],
        on_undecodable: Callable[[str, str, str], None] = lambda method, message, peer: None,
    ) -> None:
        """``on_refused(method, cap)``: a call refused at ``cap``; ``on_undecodable(method, what, peer)``: a
        request whose bytes are no ``what`` (INVALID_ARGUMENT), :attr:`Undecodable.described`."""
        # reentrant: a reply stream in a garbage cycle frees its slot on whichever thread collects it,
        # maybe one inside this lock
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        busy = f"all --workers {workers} handler threads are busy (each open StreamAct holds one)"
        workers_cap = Cap(f"/{SERVICE_NAME}/", workers, busy, "workers", "--workers")
        also = f"{busy}, and the {CONTROL_CALLS} of GetSpec, GetStats, Reset and Reload too"
        control = Cap(CONTROL_METHODS, CONTROL_CALLS, also, "control", "--workers")
        self._caps = (
            control,
            workers_cap,
            Cap(
                HEALTH_WATCH,
                WATCH_STREAMS,
                f"at most {WATCH_STREAMS} open health Watch streams",
                "watch",
                code=grpc.StatusCode.UNIMPLEMENTED,
                message_s=HEALTH_MESSAGE_S,
            ),
            Cap(  # after Watch
                HEALTH,
                HEALTH_CHECKS,
                f"at most {HEALTH_CHECKS} health Checks in flight",
                "health",
                message_s=HEALTH_MESSAGE_S,
            ),
            Cap(
                f"/{reflection.SERVICE_NAME}/",
                REFLECTION_STREAMS,
                f"at most {REFLECTION_STREAMS} open reflection streams",
                "reflection",
            ),
        )
        self._open = dict.fromkeys(self._caps, 0)  # the calls in flight under each cap
        self._workers = workers_cap
        self._overflow = {control: workers_cap}  # a cap's calls beyond it take this one's idle threads
        self._holders: collections.Counter[str] = collections.Counter()
        """By connection (gRPC's peer: address and port): the calls in flight on the workers' threads."""
        self._on_refused = on_refused
        self._on_undecodable = on_undecodable
        self._busy: dict[grpc.ServicerContext, bool] = {}
        self._watches: dict[grpc.ServicerContext, int] = {}  # the last health status each sent
        self._closing = False
        self._tracking = {  # (method, its handler's kind): the tracking wrapper
            (STREAM_ACT, "stream_stream"): self._tracked,
            (HEALTH_WATCH, "unary_stream"): self._watched,
        }

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        kind = KINDS[handler.request_streaming, handler.response_streaming]
        behavior = getattr(handler, kind)
        method = handler_call_details.method
        track = self._tracking.get((method, kind))
        if track is not None:
            behavior = functools.partial(track, behavior)
        cap = next((cap for cap in self._caps if method.startswith(cap.prefix)), None)

        def counted(requests: Iterator[Message], context: grpc.ServicerContext) -> Message | Iterator[Message]:
            ended = self._started(context, cap)
            if ended is None:
                self._on_refused(method.rsplit("/", 1)[-1], cap)
                context.abort(cap.code, cap.refusal)
            try:
                within_s = None if cap is None else cap.message_s
                request: Message | Iterator[Message]
                if handler.request_streaming:
                    request = self._decoded(requests, method, context)
                else:
                    request = self._checked(_only(requests, method, context, within_s), method, context)
                replies = behavior(request, context)
            except BaseException:
                ended()
                raise
            if not handler.response_streaming:
                ended()
                return replies
            return _held(replies, ended)

        # always request-streaming: gRPC runs a unary-request handler only once its message has come,
        # and a call that never sent it held a thread, counted under no cap (--workers + spare such
        # calls, no token needed, made gRPC refuse every other call: "Concurrent RPC limit exceeded!");
        # this one takes its slot (or is refused) first, then reads the message
        streaming = "stream" if handler.response_streaming else "unary"
        return getattr(grpc, f"stream_{streaming}_rpc_method_handler")(
            counted,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _checked(self, request: Message | Undecodable, method: str, context: grpc.ServicerContext) -> Message:
        """``request``, or the call refused (INVALID_ARGUMENT) when its bytes did not parse."""
        if isinstance(request, Undecodable):
            self._on_undecodable(method.rsplit("/", 1)[-1], request.described, printable(context.peer()))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid {request.described}")
        return request

    def _decoded(
        self, requests: Iterator[Message | Undecodable], method: str, context: grpc.ServicerContext
    ) -> Iterator[Message]:
        """A request stream's messages, refusing the call (INVALID_ARGUMENT) at the first that did not parse."""
        for request in requests:
            yield self._checked(request, method, context)

    def _started(self, context: grpc.ServicerContext, cap: Cap | None) -> Callable[[], None] | None:
        """Count the call in flight, or refuse it (None) when its cap, and the cap it overflows into
        (:data:`CONTROL_CALLS` into the workers), are reached. A counted call holds its slot until gRPC
        has ended it and its handler has returned (call what this returns then): a slot freed at the
        call's end alone, while a handler ran on past its client's cancel (a Reload building a large
        model), let more calls in than there were threads, and gRPC refused the rest ("Concurrent RPC
        limit exceeded!", counted nowhere)."""
        peer = context.peer() if cap is self._workers or cap in self._overflow else ""  # holds worker threads
        with self._lock:
            if cap is not None:
                if self._open[cap] >= cap.most:
                    cap = self._overflow.get(cap)
                    if cap is None or self._open[cap] >= cap.most:
                        return None
                self._open[cap] += 1
                if cap is self._workers:
                    self._holders[peer] += 1
            self._in_flight += 1
        pending = {"call", "handler"}
        ended = functools.partial(self._ended, cap, peer, pending)
        if not context.add_callback(functools.partial(ended, "call")):  # False: it has ended
            ended("call")
        return functools.partial(ended, "handler")

    def _ended(self, cap: Cap | None, peer: str, pending: set[str], end: str) -> None:
        """One ``end`` of a call (``call``, ``handler``) has come, each counted once: after both, its
        slot is free."""
        with self._lock:
            if end not in pending:
                return
            pending.remove(end)
            if pending:
                return
            if cap is not None:
                self._open[cap] -= 1
                if cap is self._workers:
                    self._holders[peer] -= 1
                    if not self._holders[peer]:
                        del self._holders[peer]
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.notify_all()

    def refusal_warning(self, cap: Cap) -> str:
        """What the server logs of a call refused at ``cap``: :attr:`Cap.warning`, naming for the workers (and
        the control calls, which overflow into them) the connection that holds the most of their threads, so
        that a client holding them all (sessions a program opens and never closes) can be found."""
        if cap is not self._workers and self._overflow.get(cap) is not self._workers:
            return cap.warning
        with self._lock:
            busiest = self._holders.most_common(1)
        if not busiest:
            return cap.warning
        peer, held = busiest[0]
        return f"{cap.warning} (the most by one connection: {held} of the {self._workers.most}, by {printable(peer)})"

    def usage(self) -> dict[str, tuple[int, int]]:
        """By cap's limit: the calls in flight under it, and its most."""
        with self._lock:
            return {cap.limit: (self._open[cap], cap.most) for cap in self._caps}

    def in_flight(self) -> int:
        """The calls in flight: each until gRPC has ended it and its handler has returned."""
        with self._lock:
            return self._in_flight

    def wait_idle(self, timeout: float) -> bool:
        """Whether every call that ran has finished, waiting up to ``timeout`` s for it."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._in_flight, timeout)

    def _watched(
        self,
        behavior: Callable[[Message, grpc.ServicerContext], Iterator[health_pb2.HealthCheckResponse]],
        request: Message,
        context: grpc.ServicerContext,
    ) -> Iterator[health_pb2.HealthCheckResponse]:
        """The health servicer's Watch (its blocking form, a reply iterator), tracked with the last
        status it sent: once closing, it ends (OK) after sending NOT_SERVING."""
        with self._lock:
            if self._closing:
                context.cancel()
                return
            self._watches[context] = SERVING
        try:
            for reply in behavior(request, context):
                yield reply
                with self._lock:
                    self._watches[context] = reply.status
                    if self._closing and reply.status != SERVING:
                        return
        finally:
            with self._lock:
                del self._watches[context]

    def _tracked(
        self,
        behavior: Callable[[Iterator[Message], grpc.ServicerContext], Generator[Message, None, None]],
        requests: Iterator[Message],
        context: grpc.ServicerContext,
    ) -> Iterator[Message]:
        with self._lock:
            if self._closing:  # accepted just before the stop: end it like an idle one
                context.cancel()
                return
            self._busy[context] = False
        replies = behavior(self._counted(requests, context), context)
        try:
            for reply in replies:
                yield reply  # gRPC resumes this generator once the reply has been sent
                with self._lock:
                    self._busy[context] = False
                    if self._closing:
                        return
        finally:
            replies.close()
            with self._lock:
                del self._busy[context]

    def _counted(self, requests: Iterator[Message], context: grpc.ServicerContext) -> Iterator[Message]:
        for request in requests:
            with self._lock:
                if self._closing:  # idle when the stop came: close() cancelled it
                    return
                self._busy[context] = True
            yield request

    def close(self) -> None:
        """Cancel the idle streams and the Watches that have nothing more to send; the others end
        once their reply is sent; new ones are cancelled."""
        with self._lock:
            self._closing = True
            ending = [context for context, busy in self._busy.items() if not busy]
            # stop() sends NOT_SERVING next: a Watch that shows SERVING ends once it has sent it
            ending += [context for context, status in self._watches.items() if status != SERVING]
        for context in ending:
            context.cancel()
