"""Calls to unary methods whose request message never comes: gRPC gave each a handler thread that
waited for the message before any interceptor's check ran, so that ``--workers`` + spare such calls
(no token needed) made gRPC refuse every other call, a robot's tokened Act and a kubelet's health
Check included ("Concurrent RPC limit exceeded!", counted nowhere). A tokenless call is now refused
without its message being read, and a call with the token takes its cap's slot before it waits."""

from __future__ import annotations

import threading
from collections import Counter

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flowrl_deploy.codec import encode
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.proto.flowrl.v1 import policy_pb2_grpc as pb_grpc
from flowrl_deploy.serve import PolicyServer, ServeConfig, interceptors
from flowrl_deploy.serve.interceptors import CONTROL_CALLS, HEALTH_CHECKS, SERVICE_NAME, SPARE_THREADS

OBS = [0.1, -0.2, 0.3]
TOKEN = (("authorization", "Bearer s3cret"),)
BUSY = "all --workers 2 handler threads are busy (each open StreamAct holds one)"


def ended(call: grpc.Future, wait: float) -> str | tuple[grpc.StatusCode, str]:
    """The status of a call that has ended within ``wait`` s, or "held"."""
    try:
        call.result(timeout=wait)
    except grpc.FutureTimeoutError:
        return "held"
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return "OK"


@pytest.fixture
def held(hold):
    """:func:`hold`'s calls, each opened once the last has been answered or held for a while: a burst
    of refusals in flight at once may itself reach gRPC's limit of calls in flight."""

    def paced(channel: grpc.Channel, method: str, metadata=None) -> grpc.Future:
        call = hold(channel, method, metadata)
        ended(call, wait=0.5)
        return call

    return paced


@pytest.mark.parametrize("metadata", [None, TOKEN], ids=["no token", "token"])
def test_calls_waiting_for_their_message_leave_health_checks_and_refusals_answered(policy_path, held, metadata):
    config = ServeConfig(str(policy_path), port=0, workers=2, token="s3cret", grace_s=0)
    many = config.workers + SPARE_THREADS + 20  # more than the server has threads
    with PolicyServer(config).start() as server, grpc.insecure_channel(server.address) as channel:
        calls = [held(channel, f"/{SERVICE_NAME}/Act", metadata) for _ in range(many)]
        calls += [held(channel, f"/{SERVICE_NAME}/Reset", metadata) for _ in range(many)]
        outcomes = Counter(ended(call, wait=0.01) for call in calls)
        if metadata is None:  # refused at once, unread
            denied = "missing or wrong token (send authorization: Bearer <token>)"
            assert outcomes == {(grpc.StatusCode.UNAUTHENTICATED, denied): 2 * many}
        else:  # each waits in its cap's slot: the control calls', then the workers'
            reset_refused = f"{BUSY}, and the {CONTROL_CALLS} of GetSpec, GetStats, Reset and Reload too"
            assert outcomes == {
                "held": config.workers + CONTROL_CALLS,
                (grpc.StatusCode.RESOURCE_EXHAUSTED, BUSY): many - config.workers,
                (grpc.StatusCode.RESOURCE_EXHAUSTED, reset_refused): many - CONTROL_CALLS,
            }
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        act = pb_grpc.PolicyServiceStub(channel).Act
        request = pb.ActRequest(obs=encode(OBS))
        with pytest.raises(grpc.RpcError) as tokenless:
            act(request, timeout=5)
        assert tokenless.value.code() == grpc.StatusCode.UNAUTHENTICATED
        if metadata is None:
            assert act(request, metadata=TOKEN, timeout=5).action.shape == [2]
        else:
            with pytest.raises(grpc.RpcError) as refused:
                act(request, metadata=TOKEN, timeout=5)
            assert (refused.value.code(), refused.value.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, BUSY)


def test_health_checks_waiting_for_their_message_are_capped(policy_path, held, monkeypatch):
    """Health Checks need no token: held open, they take at most their own threads, never the
    workers'."""
    monkeypatch.setattr(interceptors, "HEALTH_MESSAGE_S", 60.0)  # held for the whole test
    config = ServeConfig(str(policy_path), port=0, workers=2, token="s3cret", grace_s=0)
    with PolicyServer(config).start() as server, grpc.insecure_channel(server.address) as channel:
        calls = [held(channel, "/grpc.health.v1.Health/Check") for _ in range(config.workers + SPARE_THREADS + 20)]
        outcomes = Counter(ended(call, wait=0.01) for call in calls)
        refused = (grpc.StatusCode.RESOURCE_EXHAUSTED, f"at most {HEALTH_CHECKS} health Checks in flight")
        assert outcomes == {"held": HEALTH_CHECKS, refused: len(calls) - HEALTH_CHECKS}
        reply = pb_grpc.PolicyServiceStub(channel).Act(pb.ActRequest(obs=encode(OBS)), metadata=TOKEN, timeout=5)
        assert reply.action.shape == [2]


@pytest.mark.parametrize("method", ["Check", "Watch"])
def test_health_calls_whose_message_never_comes_end_and_free_their_slots(policy_path, held, method):
    """Two Checks that never sent their message held both health slots for as long as their client
    liked, and every probe was refused: a kubelet's liveness probe then restarted a healthy pod, in a
    loop. A health call's message (a few bytes) must come within HEALTH_MESSAGE_S."""
    config = ServeConfig(str(policy_path), port=0, workers=2, grace_s=0)
    with PolicyServer(config).start() as server, grpc.insecure_channel(server.address) as channel:
        calls = [held(channel, f"/grpc.health.v1.Health/{method}") for _ in range(interceptors.HEALTH_CHECKS)]
        outcomes = [ended(call, wait=interceptors.HEALTH_MESSAGE_S + 5) for call in calls]
        assert {outcome[0] for outcome in outcomes} == {grpc.StatusCode.CANCELLED}, outcomes
        assert server._streams.wait_idle(5)  # their slots are free
        with grpc.insecure_channel(server.address) as prober:
            reply = health_pb2_grpc.HealthStub(prober).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert server._streams.wait_idle(5)


@pytest.mark.parametrize(
    ("messages", "code", "details"),
    [
        (0, grpc.StatusCode.UNIMPLEMENTED, f'"/{SERVICE_NAME}/GetSpec" requires exactly one request message.'),
        (2, grpc.StatusCode.OK, None),  # as gRPC's own unary handling: the first is read, the rest ignored
    ],
)
def test_a_unary_method_sent_another_number_of_messages_is_answered_as_grpc_answers_it(
    policy_path, messages, code, details
):
    config = ServeConfig(str(policy_path), port=0, workers=2, token="s3cret", grace_s=0)
    with PolicyServer(config).start() as server, grpc.insecure_channel(server.address) as channel:
        call = channel.stream_unary(
            f"/{SERVICE_NAME}/GetSpec",
            request_serializer=pb.GetSpecRequest.SerializeToString,
            response_deserializer=pb.GetSpecReply.FromString,
        )
        requests = iter([pb.GetSpecRequest()] * messages)
        if code == grpc.StatusCode.OK:
            assert call(requests, metadata=TOKEN, timeout=5).obs_dim == 3
        else:
            with pytest.raises(grpc.RpcError) as refused:
                call(requests, metadata=TOKEN, timeout=5)
            assert (refused.value.code(), refused.value.details()) == (code, details)
        assert server._streams.wait_idle(5)


def test_a_watch_whose_message_came_stays_open_past_the_message_bound(policy_path, monkeypatch):
    """The bound is on the request message alone: a Watch whose message came (gRPC's client-side
    health checking holds one per connection) stays open, and ends with OK at the stop, not cut
    with CANCELLED once the bound has passed (every health-checked connection would fail then)."""
    monkeypatch.setattr(interceptors, "HEALTH_MESSAGE_S", 0.2)
    server = PolicyServer(ServeConfig(str(policy_path), port=0, grace_s=30)).start()  # stop ends Watches at once
    try:
        with grpc.insecure_channel(server.address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=30)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            threading.Event().wait(5 * interceptors.HEALTH_MESSAGE_S)
            assert watch.is_active()
            server.stop()
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert next(watch, None) is None  # ended with OK
            assert watch.code() == grpc.StatusCode.OK
    finally:
        server.stop()
