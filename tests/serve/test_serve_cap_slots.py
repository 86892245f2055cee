"""OpenStreams' caps count the handler threads in use: a call's slot is held until its handler has
returned (a response stream: its reply iterator ended, was closed or dropped) and gRPC has ended
the call, whichever comes last, and freed once."""

from __future__ import annotations

import gc
import threading
from types import SimpleNamespace

import grpc
import pytest
from call_context import CallContext
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.proto.flowrl.v1 import policy_pb2_grpc as pb_grpc
from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.serve.interceptors import CONTROL_CALLS, SERVICE_NAME, OpenStreams

# a slot freed twice raises in weakref's finalizer, where Python only prints it: fail the test instead
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


def test_a_handler_running_on_after_its_client_cancelled_keeps_its_slot(policy_path):
    """A handler past its client's cancel (a Reload building an onnxruntime session for a large file)
    freed its slot at the call's end while it still held its thread: more calls were admitted than
    there were threads, and gRPC refused the rest ("Concurrent RPC limit exceeded!", counted nowhere).
    The next call over the cap is refused by the cap, naming the limit, and counted."""
    config = ServeConfig(str(policy_path), port=0, workers=1, grace_s=0)
    server = PolicyServer(config)
    entered, ended, release = threading.Semaphore(0), threading.Semaphore(0), threading.Event()

    def slow_reload(request, context):
        context.add_callback(ended.release)  # after OpenStreams' own end callback, added before the handler ran
        entered.release()
        release.wait(30)
        return pb.ReloadReply()

    server.servicer.Reload = slow_reload  # the handlers are taken from the servicer at start()
    with server.start(), grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.PolicyServiceStub(channel)
        try:
            for _ in range(CONTROL_CALLS + config.workers):  # the control threads, then the idle worker
                call = stub.Reload.future(pb.ReloadRequest(), timeout=30)
                assert entered.acquire(timeout=10)
                call.cancel()
                assert ended.acquire(timeout=10)  # gRPC has ended the call; its handler runs on
            assert server._streams.usage()["control"] == (CONTROL_CALLS, CONTROL_CALLS)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Reload(pb.ReloadRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused.value.details() == (
                "all --workers 1 handler threads are busy (each open StreamAct holds one), "
                f"and the {CONTROL_CALLS} of GetSpec, GetStats, Reset and Reload too"
            )
            checked = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert checked.status == health_pb2.HealthCheckResponse.SERVING  # its spare threads are free
        finally:
            release.set()
        assert server._streams.wait_idle(10)
        assert server._streams.usage()["control"] == (0, CONTROL_CALLS)
        exposition = server.servicer.metrics.exposition()
    assert 'flowrl_refused_total{limit="control"} 1' in exposition
    assert 'flowrl_requests_total{method="Reload",code="RESOURCE_EXHAUSTED"} 1' in exposition


def intercepted(streams: OpenStreams, method: str, make_handler, behavior):
    details = SimpleNamespace(method=f"/{SERVICE_NAME}/{method}")
    handler = streams.intercept_service(lambda _: make_handler(behavior), details)
    assert handler.request_streaming  # it reads the unary request itself, once it holds its slot
    kind = "stream_stream" if handler.response_streaming else "stream_unary"
    return lambda request, context: getattr(handler, kind)(iter([request]), context)


def test_a_unary_call_ended_while_its_handler_runs_keeps_its_slot_until_the_handler_returns():
    streams = OpenStreams(workers=1, on_refused=lambda method, cap: None)
    seen = []

    def handler(request, context):
        context.end()  # the client cancelled: gRPC ended the call, the handler runs on
        seen.append(streams.usage()["workers"])
        return "acted"

    assert intercepted(streams, "Act", grpc.unary_unary_rpc_method_handler, handler)("obs", CallContext()) == "acted"
    assert seen == [(1, 1)]
    assert streams.usage()["workers"] == (0, 1) and streams.wait_idle(0)


def test_a_unary_handler_that_returned_keeps_its_slot_until_the_call_ends():
    streams = OpenStreams(workers=1, on_refused=lambda method, cap: None)
    context = CallContext()
    intercepted(streams, "Act", grpc.unary_unary_rpc_method_handler, lambda r, c: "acted")("obs", context)
    assert streams.usage()["workers"] == (1, 1) and not streams.wait_idle(0)
    context.end()
    assert streams.usage()["workers"] == (0, 1) and streams.wait_idle(0)


def test_a_unary_handler_that_raised_frees_its_slot_at_the_call_end():
    streams = OpenStreams(workers=1, on_refused=lambda method, cap: None)
    context = CallContext()

    def failing(request, context):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        intercepted(streams, "Act", grpc.unary_unary_rpc_method_handler, failing)("obs", context)
    context.end()
    assert streams.usage()["workers"] == (0, 1) and streams.wait_idle(0)


def test_a_refusal_at_the_workers_names_the_connection_holding_the_most_of_them_while_it_does():
    """One client holding every worker (sessions a program opens and never closes) is named by address and
    port in the refusal's warning, with how many it holds; once its calls end it is named no more."""
    streams = OpenStreams(workers=3, on_refused=lambda method, cap: None)
    workers = next(cap for cap in streams._caps if cap.limit == "workers")
    hog, other = CallContext(), CallContext()
    other.peer = lambda: "ipv4:10.0.0.9:5000"
    contexts = [hog, hog, other]
    for context in contexts:
        intercepted(streams, "Act", grpc.unary_unary_rpc_method_handler, lambda r, c: "acted")("obs", context)
    assert streams.refusal_warning(workers) == (
        f"{workers.warning} (the most by one connection: 2 of the 3, by ipv4:127.0.0.1:40000)"
    )
    hog.end()
    assert streams.refusal_warning(workers).endswith("(the most by one connection: 1 of the 3, by ipv4:10.0.0.9:5000)")
    other.end()
    assert streams.refusal_warning(workers) == workers.warning and streams.wait_idle(0)


def replies(count: int):
    yield from range(count)


@pytest.mark.parametrize("finish", ["exhausted", "closed", "dropped unstarted", "dropped started"])
def test_a_reply_stream_keeps_its_slot_until_it_ends_and_the_call_ends_and_frees_it_once(finish):
    """A response-streaming handler runs (holds its thread) while its reply iterator is iterated: the
    call's end alone no longer frees its slot, and an iterator closed, exhausted or dropped (even
    one never started) frees it once, however many of these happen."""
    streams = OpenStreams(workers=1, on_refused=lambda method, cap: None)
    context = CallContext()
    stream = intercepted(streams, "GetStats", grpc.unary_stream_rpc_method_handler, lambda r, c: replies(2))(
        "request", context
    )
    if finish != "dropped unstarted":
        assert next(stream) == 0
    context.end()  # the client cancelled
    assert streams.usage()["control"] == (1, 4) and not streams.wait_idle(0)
    if finish == "exhausted":
        assert list(stream) == [1]
    elif finish == "closed":
        stream.close()
    del stream
    gc.collect()
    assert streams.usage()["control"] == (0, 4) and streams.wait_idle(0)
    assert streams.usage()["workers"] == (0, 1)  # nothing freed twice (it would show -1)


def test_a_reply_stream_that_ended_before_the_call_keeps_its_slot_until_the_call_ends():
    streams = OpenStreams(workers=1, on_refused=lambda method, cap: None)
    context = CallContext()
    stream = intercepted(streams, "GetStats", grpc.unary_stream_rpc_method_handler, lambda r, c: replies(1))(
        "request", context
    )
    assert list(stream) == [0]
    assert streams.usage()["control"] == (1, 4)
    context.end()
    assert streams.usage()["control"] == (0, 4) and streams.wait_idle(0)


def test_a_reply_stream_of_a_call_ended_before_its_handler_ran_frees_its_slot_when_it_ends():
    """gRPC refuses the end callback of a call it ended before its handler ran (a client that cancelled
    or timed out while queued): that end counts at once, or each such call leaked its slot for good.
    The unary case: test_serve_security.py."""
    streams = OpenStreams(workers=1, on_refused=lambda method, cap: None)
    for _ in range(CONTROL_CALLS + 1):  # more than the cap: each one's slot was freed
        stream = intercepted(streams, "GetStats", grpc.unary_stream_rpc_method_handler, lambda r, c: replies(1))(
            "request", CallContext(ended=True)
        )
        assert list(stream) == [0]
        assert streams.usage()["control"] == (0, CONTROL_CALLS) and streams.wait_idle(0)
    assert streams.usage()["workers"] == (0, 1)


def test_a_handler_that_fails_to_make_its_reply_stream_frees_its_slot_at_the_call_end():
    streams = OpenStreams(workers=1, on_refused=lambda method, cap: None)
    context = CallContext()

    def failing(request, context):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        intercepted(streams, "GetStats", grpc.unary_stream_rpc_method_handler, failing)("request", context)
    context.end()
    assert streams.usage()["control"] == (0, 4) and streams.wait_idle(0)


def test_a_reply_stream_freed_by_a_thread_holding_the_caps_lock_frees_its_slot_without_deadlock():
    """A reply stream left in a garbage cycle (an aborted call's exception holds the frame that
    holds it) is freed by whichever thread's allocation runs the collector, maybe one inside
    OpenStreams' own lock: freeing its slot there must not wait for that lock forever."""
    streams = OpenStreams(workers=1, on_refused=lambda method, cap: None)
    context = CallContext()
    stream = intercepted(streams, "GetStats", grpc.unary_stream_rpc_method_handler, lambda r, c: replies(1))(
        "request", context
    )
    context.end()

    def drop_inside_the_lock() -> None:
        nonlocal stream
        with streams._lock:
            stream = None  # what a collection run here does

    dropping = threading.Thread(target=drop_inside_the_lock, daemon=True)
    dropping.start()
    dropping.join(timeout=10)
    assert not dropping.is_alive(), "deadlocked"
    assert streams.usage()["control"] == (0, 4) and streams.wait_idle(0)
