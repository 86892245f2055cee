"""A control session's link to the server (no torch): one ``StreamAct`` stream at a time
(:class:`StreamCall`: requests through a queue, replies collected by a reader thread), reopened with
backoff after a break, and the exchange of a tick on it, stale replies dropped (:class:`StreamLink`).

A tick without a fresh reply gets a reason (a :attr:`~flowrl_deploy.session.CallTiming.reason`), each
change of which is logged once, as a warning, to the logger ``flowrl.client``."""

from __future__ import annotations

import collections
import logging
import queue
import random
import threading
import time
import weakref
from typing import TYPE_CHECKING

import grpc
import numpy as np
import numpy.typing as npt

from flowrl_deploy.client import ContractMismatchError, PolicyClient, ServiceError, service_error
from flowrl_deploy.codec import encode
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb

if TYPE_CHECKING:
    from flowrl_deploy.session import ControlSession
    from flowrl_deploy.session_fallback import FallbackPolicy

log = logging.getLogger("flowrl.client")

# Codes after which a control loop may carry on with its fallback; the others are mistakes to fix.
TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}
REFUSED_UNDRAWN = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}
"""The codes with which the server refuses a tick before drawing its noise (the session limit, a model
still loading): a stream's request refused so did not open its session, or opened it without a draw."""
DISCONNECTED = "disconnected"
"""The fallback reason of a tick without an open stream: the server is down, or the reconnection backs off."""
DEADLINE = "deadline"
"""The fallback reason of a tick whose reply did not come within its deadline."""
BACKLOG = "backlog"
"""The fallback reason of a tick not sent: an earlier tick was still unanswered on the stream, sent more than
:data:`BACKLOG_TICKS` ticks (periods, or deadlines where longer) before, until this tick's deadline. A stalled
or overloaded server would otherwise work through every tick queued meanwhile, each already late, before
answering a fresh one: after a 2 s stall, 0.3 s of misses at 200 Hz, seconds at 1 kHz."""
BACKLOG_TICKS = 2
INVALID_ACTION = "invalid action"
"""The fallback reason of a tick whose reply held no action to apply: not act_dim finite numbers within the
action bounds (a broken or foreign model; an exported graph's tanh keeps them in)."""

CLOSED = "closed"
"""The fallback reason of a tick whose stream ended because another thread closed the session meanwhile
(the session's next call raises :class:`SessionClosedError`)."""
SERVER_CLOSED = "the server closed the stream, as it does when stopping or restarting"
"""Why a stream ended, when it ended without a reason of its own: a stopping server ends the streams it
serves (OK), cancels its idle ones (CANCELLED, whose details only repeat the code) and, with no grace
left, all calls (UNAVAILABLE, 'Cancelling all calls')."""

_END = object()


class StreamCall:
    """One open ``StreamAct`` call: requests go through a queue, a reader thread collects replies."""

    def __init__(self, client: PolicyClient) -> None:
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.replies: queue.SimpleQueue = queue.SimpleQueue()
        self.error: ServiceError | None = None
        with client.calling():
            self.call = client.stub.StreamAct(iter(self.requests.get, _END), metadata=client.metadata)
        self._reader = threading.Thread(target=self._read, name="flowrl-stream", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for reply in self.call:
                self.replies.put(reply)
            self.error = ServiceError(grpc.StatusCode.UNAVAILABLE, SERVER_CLOSED)
        except grpc.RpcError as exc:
            self.error = service_error(exc)
        finally:
            # The call ended (also when its client closed the channel): end its requests too, else gRPC's
            # thread feeding the call from them waits on the queue for good (a second _END is harmless).
            self.requests.put(_END)
        self.replies.put(_END)

    def close(self) -> None:
        self.requests.put(_END)
        self.call.cancel()
        if threading.current_thread() is not self._reader:  # a collection on the reader closing its session
            self._reader.join(timeout=1.0)


class SessionBusyError(FlowRLError):
    """A :class:`~flowrl_deploy.session.ControlSession` call made while another ``act`` or ``reset`` of
    the session runs (from another thread): refused at once, so skip the call, not the robot."""


class SessionClosedError(FlowRLError):
    """A :class:`~flowrl_deploy.session.ControlSession` call after the session's ``close()``."""


def closed_error(method: str) -> SessionClosedError:
    """The error of a :class:`~flowrl_deploy.session.ControlSession` call ``method`` after its close()."""
    return SessionClosedError(f"ControlSession.{method} after close(): open a new session with client.session(...)")


class StreamLink:
    """A control session's ``StreamAct`` stream to the server, one at a time: opened when the session is
    made, reopened after a break with exponential backoff (each wait drawn from [half, all] of it), and
    the exchange of each tick on it (:meth:`exchange`).

    It reads what it sends and logs of ``session`` when it does, as the session holds it then: its
    ``session_id``, its ``seed`` and its contract pin (``contract_hash``, ``contract_json``; ``pinned``,
    and ``info``, the policy served when it opened), and its ``fallback``. The first request on a stream
    may open the session on the server: it carries the seed and the pin, and the server restarts its
    noise from the seed there; ``noise``, the session's fallback, restarts its own alike. A server
    refusal of the pin is raised as :class:`~flowrl_deploy.client.ContractMismatchError`
    (:meth:`refused`), other refusals that are not :data:`TRANSIENT` as they are; a transient one, a
    break or a late reply is the tick's fallback reason, logged once per cause."""

    def __init__(
        self, client: PolicyClient, session: ControlSession, backoff_s: tuple[float, float], noise: FallbackPolicy
    ) -> None:
        self.client = client
        # A weak reference: the session holds this link, and no cycle keeps a dropped session alive
        # (its finalizer, which closes this link, then runs as soon as its last reference goes).
        self.session: ControlSession = weakref.proxy(session)
        self.noise = noise
        self.closed = False
        self._backoff_s = backoff_s
        self._retry_in = backoff_s[0]
        self._retry_at = 0.0
        self._jitter = random.Random()  # the session's own (seeded from os.urandom), not the global state
        self._opened = False
        self._restart_noise = True  # whether the next request sent may open the session on its stream
        self._down = DISCONNECTED  # the reason of the ticks while no stream is open
        self._warned = ""  # the fallback reason last logged since the last fresh action
        self.stream: StreamCall | None = StreamCall(client)
        self.unanswered = 0  # the last tick sent on the stream whose reply has not come (0: none)
        self.sent: collections.deque[tuple[int, float]] = collections.deque()
        """(seq, time.perf_counter() when sent) of the ticks sent on the stream whose replies have not been read,
        oldest first: the stream answers in order, so a reply to tick s answers every one up to s."""

    def exchange(self, obs: npt.NDArray[np.float32], seq: int, until: float) -> pb.StreamActReply | str:
        """The fresh reply to tick ``seq``, sent on the open stream (or on one opened for it), waited for
        until ``until`` (time.perf_counter); or why there is none (a :attr:`CallTiming.reason`)."""
        stream = self._live_stream()
        if stream is None:
            return self._down
        while self._behind():  # wait for the server to catch up rather than add to its queue
            reply = _next_reply(stream, until)
            if reply is None:
                return BACKLOG
            if reply is _END:
                return self._broken()
            self._late(reply, seq)
        session = self.session
        request = pb.StreamActRequest(
            session_id=session.session_id,
            seq=seq,
            obs=encode(obs, name="obs"),
            client_send_unix_ns=time.time_ns(),
            timeout_us=max(1, int((until - time.perf_counter()) * 1e6)),
        )
        if not self._opened:
            if session.seed is not None:
                request.seed = session.seed
            request.contract_hash = session.contract_hash
            request.contract_json = session.contract_json
        stream.requests.put(request)
        self.unanswered = seq
        self.sent.append((seq, time.perf_counter()))  # after the put: an interrupt between leaves no tick unsent here
        if self._restart_noise:  # the server may open the session with this request, and draw for it
            self.noise.restart_noise(session.seed, seq)
            self._restart_noise = False
        while True:
            reply = _next_reply(stream, until)
            if reply is None:
                return DEADLINE
            if reply is _END:
                return self._broken()
            if reply.seq != seq:  # the late answer to an earlier tick
                self._late(reply, seq)
                continue
            self._answered(seq)
            self.unanswered = 0
            if reply.status.code == 0:
                self._opened = True  # only now: a refused opening is sent again with the seed and pin
                self._retry_in, self._retry_at = self._backoff_s[0], 0.0  # a later break retries soon again
                return reply
            code = grpc.StatusCode[_code_name(reply.status.code)]
            if self._refused_undrawn(reply):
                self._restart_noise = True  # the server drew nothing: the next request opens the session afresh
            if code not in TRANSIENT:
                raise self.refused(ServiceError(code, reply.status.message))
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:  # the server found the tick late: not logged, as "deadline"
                return code.name
            return self._noted(code.name, f"the server refuses its ticks ({code.name}: {reply.status.message})")

    def _late(self, reply: pb.StreamActReply, seq: int) -> None:
        """Take the late reply to an earlier tick than ``seq`` (dropped): a refusal that is not
        :data:`TRANSIENT` (a refused pin, a bad token) is raised as the current tick's would be, not
        taken for a slow server."""
        self._answered(reply.seq)
        if self._refused_undrawn(reply):  # no draw for it: the next request the server takes opens the session
            sent_after = sum(1 for sent, _ in self.sent if sent < seq)  # the server drew for each of them
            self.noise.opening_refused(self.session.seed, reply.seq, sent_after)
        if reply.status.code != 0:
            code = grpc.StatusCode[_code_name(reply.status.code)]
            if code not in TRANSIENT:
                raise self.refused(ServiceError(code, reply.status.message))

    def interrupted(self) -> None:
        """A tick was interrupted (a Ctrl-C), perhaps between reading a reply and noting it: forget the ticks
        unanswered, or one answered already would hold back every later tick as ``backlog``. At worst a
        tick is sent behind one still queued on the server."""
        self.sent.clear()

    def _answered(self, seq: int) -> None:
        """The reply to tick ``seq`` was read: it and every tick sent before it are answered."""
        while self.sent and self.sent[0][0] <= seq:
            self.sent.popleft()

    def _behind(self) -> bool:
        """Whether the oldest tick unanswered on the stream was sent :data:`BACKLOG_TICKS` ticks ago or more."""
        if not self.sent:  # as on every tick whose reply came in time: no more work on the control path
            return False
        session = self.session
        tick_s = max(session.period_s, session.deadline_s)
        return time.perf_counter() - self.sent[0][1] >= BACKLOG_TICKS * tick_s

    def _refused_undrawn(self, reply: pb.StreamActReply) -> bool:
        """Whether ``reply`` refuses a request that would have opened the session, before any draw."""
        return (
            not self._opened
            and reply.status.code != 0
            and grpc.StatusCode[_code_name(reply.status.code)] in REFUSED_UNDRAWN
        )

    def _live_stream(self) -> StreamCall | None:
        """The open stream, or one opened now when the backoff allows; None meanwhile."""
        if self.stream is not None:
            return self.stream
        now = time.monotonic()
        if now < self._retry_at:
            return None
        self._retry_at = self._next_try(now)
        self._retry_in = min(self._retry_in * 2, self._backoff_s[1])
        self._opened = False
        self._restart_noise = True  # the new stream's first request restarts the server's noise from the seed
        self.stream = stream = StreamCall(self.client)
        self.unanswered = 0
        self.sent.clear()
        if self.closed:  # close() ran meanwhile (from another thread) and saw no stream to close
            self.close()
            raise closed_error("act")
        return stream

    def _broken(self) -> str:
        """Drop the stream that ended; the reason of the ticks until one is open again."""
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.close()  # also before raising: a session never closed leaves no stream behind
        if self.closed:  # the session's close(), from another thread, ended the stream: no outage, not logged
            return CLOSED
        self.client.check_open()  # closed meanwhile, from another thread
        if stream is not None:
            error = stream.error
            if error.code not in TRANSIENT:
                raise self.refused(error)
            if error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                if error.details in ("", "CANCELLED", "Cancelling all calls"):  # gRPC's own, at a server's stop
                    error = ServiceError(error.code, SERVER_CLOSED)  # not "(CANCELLED: CANCELLED)"
                self._down = self._noted(DISCONNECTED, f"no stream to the server, reconnecting with backoff ({error})")
            else:  # the server refused the stream itself (RESOURCE_EXHAUSTED: all its workers busy)
                self._down = self._noted(error.code.name, f"the server refuses its stream ({error})")
        if not self._retry_at or time.monotonic() >= self._retry_at:
            self._retry_at = self._next_try(time.monotonic())
        return self._down

    def _next_try(self, now: float) -> float:
        """When to try to reconnect next: after a wait drawn from [half, all] of the backoff ("equal
        jitter"), so that a fleet of robots that lost one server does not retry it in step."""
        return now + self._jitter.uniform(self._retry_in / 2, self._retry_in)

    def _noted(self, reason: str, why: str) -> str:
        """``reason``, a server refusal or ``disconnected``, logged as a warning when it is not the one
        last logged since the last fresh action: a robot at 1 kHz logs once per cause, not once per tick
        (slow ticks in between, ``deadline``, are the watchdog's business and change nothing)."""
        if reason != self._warned:
            self._warned = reason
            session = self.session
            log.warning("control session %s acts on its %s fallback: %s", session.session_id, session.fallback, why)
        return reason

    def invalid_action(self) -> str:
        """The reason of a tick whose reply held no action to apply, logged once per cause as a refusal is."""
        return self._noted(
            INVALID_ACTION,
            "the server's actions are not act_dim finite numbers within the action bounds (a broken model?)",
        )

    def recovered(self, misses: int) -> None:
        """A fresh action came: after a logged fallback, say so at INFO (with the ``misses`` in a row)."""
        if not self._warned:
            return
        log.info(
            "control session %s has fresh actions again after %d ticks on its %s fallback (%s)",
            self.session.session_id,
            misses,
            self.session.fallback,
            self._warned,
        )
        self._warned = ""

    def refused(self, error: ServiceError) -> ServiceError:
        """The error to raise for the server's refusal ``error``: a refused pin (FAILED_PRECONDITION, the
        one precondition of a tick or a reset) as :class:`ContractMismatchError`, saying so when the
        session pinned the contract served when it opened; any other as it is."""
        if error.code != grpc.StatusCode.FAILED_PRECONDITION:
            return error
        if self.session.pinned:
            return ContractMismatchError(error.details)
        served = self.session.info.contract_hash
        return ContractMismatchError(
            f"the served policy contract changed since this session opened ({error.details}); the session "
            f"pinned the contract served then, {served}, rather than act on another interface: "
            "check the new contract (`flowrl inspect --server`), then open a new session"
        )

    def await_last_reply(self, until: float, reset_timeout_s: float) -> None:
        """Wait (until ``until``, time.perf_counter) for the server to answer every tick sent on the
        stream, dropping the late replies; raise :class:`ServiceError` if it has not by then (a reset
        waiting ``reset_timeout_s``, as its message says)."""
        stream, seq = self.stream, self.unanswered
        if stream is None or not seq:
            return
        while (reply := _next_reply(stream, until)) is not _END:
            if reply is None:
                raise ServiceError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no reply to tick {seq} within reset_timeout_s {reset_timeout_s:g} s: the server may "
                    "still draw that tick's noise, so the reset was not sent (try again, or open a new session)",
                )
            self._late(reply, seq + 1)  # a refusal that falling back would not mend is raised, as by a tick
            if reply.seq == seq:
                break
        else:
            stream.replies.put(_END)  # the stream ended: the next tick sees it, and reconnects
        self.unanswered = 0
        self.sent.clear()

    def close(self) -> None:
        """End the stream; a closed link opens no other. Closing again does nothing."""
        self.closed = True
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.close()


def _next_reply(stream: StreamCall, until: float) -> pb.StreamActReply | object | None:
    """The stream's next reply (or ``_END``), waited for until ``until`` (time.perf_counter); None after."""
    remaining = until - time.perf_counter()
    try:
        return stream.replies.get(timeout=remaining) if remaining > 0 else stream.replies.get_nowait()
    except queue.Empty:
        return None


def _code_name(value: int) -> str:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code.name
    return "UNKNOWN"
