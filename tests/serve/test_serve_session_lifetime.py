"""A ControlSession's stream ends with the session or with its client, whichever goes first: a session
never closed leaves no gRPC thread once its client is closed; one dropped without close() ends its stream
and its server session when it is collected, with a ResourceWarning; a tick in flight when another thread
closes the session falls back as 'closed', not as a lost connection."""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from concurrent import futures

import grpc
import numpy as np
import pytest
from test_serve_control_session_reconnect import _request_consumers
from tiny_policy import ACT_DIM

from flowrl_deploy.client import ClientClosedError, PolicyClient
from flowrl_deploy.control_metrics import exposition
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.proto.flowrl.v1 import policy_pb2_grpc as pb_grpc
from flowrl_deploy.session import SessionClosedError

OBS = np.array([0.3, -0.2, 0.1], np.float32)


def _eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Whether ``condition`` holds within ``timeout_s`` (polled: a thread ends when its call has ended)."""
    until = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > until:
            return False
        time.sleep(0.01)
    return True


def _readers() -> int:
    return sum(thread.name == "flowrl-stream" for thread in threading.enumerate())


class _FrozenServer(pb_grpc.PolicyServiceServicer):
    """The served spec, and StreamAct streams that take each request and never answer (a frozen server);
    ``seqs`` gets each request's seq as it comes."""

    def __init__(self, spec: pb.GetSpecReply) -> None:
        self.spec = spec
        self.seqs: queue.SimpleQueue[int] = queue.SimpleQueue()

    def GetSpec(self, request, context):
        return self.spec

    def StreamAct(self, request_iterator, context):
        for request in request_iterator:
            self.seqs.put(request.seq)
        return
        yield  # a generator, as a stream-reply handler is


@pytest.fixture
def frozen(server):
    with grpc.insecure_channel(server.address) as channel:
        spec = pb_grpc.PolicyServiceStub(channel).GetSpec(pb.GetSpecRequest(), timeout=5)
    servicer = _FrozenServer(spec)
    running = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_PolicyServiceServicer_to_server(servicer, running)
    port = running.add_insecure_port("127.0.0.1:0")
    running.start()
    yield f"127.0.0.1:{port}", servicer
    running.stop(grace=0)


def test_sessions_never_closed_leave_no_grpc_thread_once_their_client_is_closed(server):
    """A ROS node whose clean-up closed only the client kept one gRPC thread per session for good (it fed
    the stream from its request queue, which nothing ended)."""
    consumers, readers = _request_consumers(), _readers()
    client = PolicyClient(server.address)
    sessions = [client.session(period_s=0.5, seed=i) for i in range(3)]  # kept: not the collector's job
    for control in sessions:
        control.act(OBS)
    assert _request_consumers() == consumers + 3
    client.close()
    assert _eventually(lambda: _request_consumers() == consumers and _readers() == readers)
    for control in sessions:
        with pytest.raises(ClientClosedError):
            control.act(OBS)
        control.close()


def test_a_tick_waiting_when_its_client_is_closed_closes_its_stream_before_raising(frozen):
    address, servicer = frozen
    consumers = _request_consumers()
    client = PolicyClient(address)
    control = client.session(period_s=10.0, deadline_s=9.0)  # the longest: a loaded machine is seconds from it
    raised: list[BaseException] = []

    def tick() -> None:
        try:
            control.act(OBS)
        except BaseException as exc:  # the test reads it
            raised.append(exc)

    waiting = threading.Thread(target=tick)
    started = time.monotonic()
    waiting.start()
    assert servicer.seqs.get(timeout=30) == 1  # the tick waits for its reply
    client.close()
    waiting.join(timeout=6)
    assert time.monotonic() - started < 6  # not its deadline
    assert [type(exc) for exc in raised] == [ClientClosedError]
    assert control._stream is None  # closed, not left for a close() that may never come
    assert _eventually(lambda: _request_consumers() == consumers)
    control.close()


def _open_server_sessions(client: PolicyClient) -> int:
    return client.stats().sessions


def test_a_session_dropped_without_close_ends_its_stream_and_server_session_and_warns(server, client):
    """A node making a session in each on_activate and forgetting to close it held one of the server's
    workers per session until the client closed: 16 such sessions filled `--workers 16`."""
    sessions, consumers, readers = _open_server_sessions(client), _request_consumers(), _readers()
    gc.disable()  # the session is freed when its last reference goes, without the cycle collector
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            control = client.session(period_s=0.5, seed=0)
            control.deadline_s = 10.0  # the tick that opens the stream: served (its session open) however loaded
            control.act(OBS)
            assert control.timings[-1].source == "server"
            session_id = control.session_id
            assert _open_server_sessions(client) == sessions + 1
            dropped = weakref.ref(control)
            del control
            assert dropped() is None
    finally:
        gc.enable()
    assert [(w.category, str(w.message)) for w in caught] == [
        (
            ResourceWarning,
            f"ControlSession {session_id} was dropped without close(), which ends its stream; close a "
            "session (or open it in a with block) when its control loop ends",
        )
    ]
    assert _eventually(lambda: _open_server_sessions(client) == sessions)
    assert _eventually(lambda: _request_consumers() == consumers and _readers() == readers)


def test_a_closed_session_dropped_warns_of_nothing(client):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with client.session(period_s=0.5, seed=0) as control:
            control.act(OBS)
        del control
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


@pytest.mark.parametrize("watchdog", [None, 1])
def test_a_tick_waiting_when_another_thread_closes_the_session_falls_back_as_closed(frozen, caplog, watchdog):
    """It fell back as 'disconnected', counted and graphed as a lost connection, on an orderly shutdown;
    and with a watchdog of one miss, an orderly shutdown raised WatchdogError instead of its fallback."""
    address, servicer = frozen
    with PolicyClient(address) as client:
        control = client.session(period_s=10.0, deadline_s=9.0, fallback="zeros", max_consecutive_misses=watchdog)
        caplog.clear()  # the period's warning
        returned: list[np.ndarray] = []
        waiting = threading.Thread(target=lambda: returned.append(control.act(OBS)))
        started = time.monotonic()
        waiting.start()
        assert servicer.seqs.get(timeout=30) == 1
        control.close()
        waiting.join(timeout=6)
        assert time.monotonic() - started < 6  # not its deadline
        np.testing.assert_array_equal(returned, [np.zeros(ACT_DIM)])
        assert (control.timings[-1].source, control.timings[-1].reason) == ("zeros", "closed")
        assert control.health.fallbacks == {"closed": 1} and control.health.last_fallback_reason == "closed"
        assert 'flowrl_control_fallback_ticks_total{reason="closed"} 1\n' in exposition(control)
        with pytest.raises(SessionClosedError):
            control.act(OBS)
    assert [r for r in caplog.records if r.name == "flowrl.client" and r.levelno >= logging.WARNING] == []


def test_a_session_collected_on_its_own_reader_thread_warns_and_closes_its_stream(client, monkeypatch):
    """The collector runs wherever an allocation triggers it, the stream's reader thread included: the
    finalizer then closed the stream, whose close joined that very thread (RuntimeError there, and the
    warning never given). Here the reader runs the finalizer as it hands over a reply."""
    control = client.session(period_s=0.5, seed=0)
    stream, finalizer = control._stream, control._finalizer
    ran: list[str] = []
    errors: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))

    class CollectingOnPut(queue.SimpleQueue):
        def put(self, item, block=True, timeout=None):
            if not ran:
                ran.append(threading.current_thread().name)
                finalizer()  # what a collection of the dropped session would run, on this thread
            super().put(item, block, timeout)

    stream.replies = CollectingOnPut()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        control.act(OBS)  # its reply reaches the reader, which then runs the finalizer
        assert _eventually(lambda: not stream._reader.is_alive())
    assert ran == ["flowrl-stream"] and errors == []
    assert [w.category for w in caught] == [ResourceWarning]
    assert control._link.closed


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the raised warning, reported
def test_a_dropped_session_ends_its_stream_where_resource_warnings_are_errors(server, client):
    """pytest -W error (or a robot team's warning filter) raises the ResourceWarning in the finalizer:
    the stream must end all the same, or its server session keeps a worker."""
    sessions = _open_server_sessions(client)
    gc.disable()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            control = client.session(period_s=0.5, seed=0)
            control.act(OBS)
            link = control._link
            del control  # the finalizer's warning raises; Python reports it as unraisable
    finally:
        gc.enable()
    assert link.closed
    assert _eventually(lambda: _open_server_sessions(client) == sessions)
