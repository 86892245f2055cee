"""ControlSession across the end of its stream: an ended stream is closed, whatever its status, and a
reopened stream restarts the local fallback's noise where the server restarts its own."""

from __future__ import annotations

import sys
import threading
import time
import traceback
from concurrent import futures

import grpc
import numpy as np
import pytest
from tiny_policy import ACT_DIM, documented_noise

from flowrl_deploy.client import PolicyClient, ServiceError
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.proto.flowrl.v1 import policy_pb2_grpc as pb_grpc
from flowrl_deploy.serve import PolicyServer, ServeConfig

OBS = np.array([0.3, -0.2, 0.1], np.float32)
MISS_S = 1e-7
"""A deadline no reply can meet: the tick is a miss, so the session acts on its fallback."""
CPU = ("CPUExecutionProvider",)
"""The servers' providers: their actions and the local fallback's (on the CPU) make one episode, compared to
1e-6 with conftest's ``local``; on a GPU host the default is CUDA's, which equals the CPU only to about 1e-6."""


def _request_consumers() -> int:
    """How many of gRPC's threads that feed a stream-request call from its request iterator run now
    (named ``Thread-N (_run)``: found by the function they run)."""
    frames = sys._current_frames()
    return sum(
        any(frame.name == "consume_request_iterator" for frame in traceback.extract_stack(frames[thread.ident]))
        for thread in threading.enumerate()
        if thread.ident in frames
    )


class _RefusingServer(pb_grpc.PolicyServiceServicer):
    """The served spec, and StreamAct streams that read their first request and then end with
    PERMISSION_DENIED: the client's gRPC thread feeding the call has sent that request, and waits for
    the next one, when the status comes."""

    def __init__(self, spec: pb.GetSpecReply) -> None:
        self.spec = spec

    def GetSpec(self, request, context):
        return self.spec

    def StreamAct(self, request_iterator, context):
        next(request_iterator)
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "not for you")
        yield  # a generator, as a stream-reply handler is


def test_a_stream_ended_by_a_non_transient_status_is_closed_so_no_grpc_thread_is_left_waiting(server):
    """A stream ending with a status a control loop cannot ride out (here PERMISSION_DENIED) raised its
    ServiceError without closing the stream: gRPC's thread feeding the call waited on its request queue
    for good, one thread leaked per failure for a loop that catches the error and ticks on."""
    with grpc.insecure_channel(server.address) as channel:
        spec = pb_grpc.PolicyServiceStub(channel).GetSpec(pb.GetSpecRequest(), timeout=5)
    refusing = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_PolicyServiceServicer_to_server(_RefusingServer(spec), refusing)
    port = refusing.add_insecure_port("127.0.0.1:0")
    refusing.start()
    try:
        with PolicyClient(f"127.0.0.1:{port}") as client:
            before = _request_consumers()
            with client.session(period_s=0.5, seed=1, backoff_s=(1e-3, 1e-3)) as control:
                for _ in range(5):
                    with pytest.raises(ServiceError) as info:
                        control.act(OBS)
                    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
                    time.sleep(2e-3)  # the backoff: the next tick opens a new stream
                until = time.monotonic() + 5
                while _request_consumers() > before and time.monotonic() < until:
                    time.sleep(0.01)
                assert _request_consumers() == before  # checked before close(), which ends the live stream's
    finally:
        refusing.stop(grace=0)


def _episode(local, seed: int, ticks: int) -> list[np.ndarray]:
    """The actions of a session seeded ``seed`` for ``ticks`` ticks of OBS, from its first draw."""
    noise = documented_noise(seed)
    return [local.act(OBS[None], noise.standard_normal((1, ACT_DIM), dtype=np.float32))[0] for _ in range(ticks)]


def test_after_a_reconnect_the_local_fallback_acts_on_the_servers_draw_for_each_tick(policy_path, local):
    """The server restarts a reconnected session's noise from its seed; the local fallback did not, so
    from then on each fallback tick acted on another draw than the server's for that tick (the class
    documentation promises the same draw)."""
    seed = 4
    first = PolicyServer(ServeConfig(str(policy_path), port=0, grace_s=0, providers=CPU)).start()
    port = first.port
    restarted = None
    try:
        with PolicyClient(first.address) as client:
            control = client.session(
                period_s=0.5, seed=seed, fallback="local", local_model=str(policy_path), backoff_s=(0.02, 0.05)
            )
            for _ in range(3):
                control.act(OBS)
            assert [t.source for t in control.timings] == ["server"] * 3
            first.stop(grace=0)
            for _ in range(2):
                control.act(OBS)
                assert control.timings[-1].source == "local"
                time.sleep(0.01)
            restarted = PolicyServer(ServeConfig(str(policy_path), port=port, grace_s=0, providers=CPU)).start()
            until = time.monotonic() + 10
            while control.timings[-1].source != "server" and time.monotonic() < until:
                time.sleep(0.03)
                opened = control.act(OBS)  # a generous deadline: a stream's first request is answered or breaks
            assert control.timings[-1].source == "server"
            # The tick that reopened the stream took the seeded episode's first draw, on both sides.
            missed = [True, False, True, True, False]
            actions = [opened]
            for miss in missed:
                control.deadline_s = MISS_S if miss else 0.5
                actions.append(control.act(OBS))
                assert control.timings[-1].source == ("local" if miss else "server")
            np.testing.assert_allclose(actions, _episode(local, seed, len(actions)), atol=1e-6)
            control.close()
    finally:
        first.stop(grace=0)
        if restarted is not None:
            restarted.stop(grace=0)


def test_a_local_fallback_refused_its_opening_restarts_its_noise_with_the_tick_that_opens_the_session(
    policy_path, local
):
    """A stream's first ticks refused at the server's session limit draw nothing there; the tick that
    then opens the session restarts the server's noise from the seed, and the local fallback's with it."""
    seed = 8
    config = ServeConfig(str(policy_path), port=0, grace_s=0, max_sessions=1, providers=CPU)
    with PolicyServer(config).start() as server, PolicyClient(server.address) as client:
        other = client.session(period_s=0.5, seed=0)
        other.act(OBS)  # the server's one session
        control = client.session(period_s=0.5, seed=seed, fallback="local", local_model=str(policy_path))
        for _ in range(2):
            control.act(OBS)
            assert (control.timings[-1].source, control.timings[-1].reason) == ("local", "RESOURCE_EXHAUSTED")
        other.close()  # the end of its stream frees the server's one session
        until = time.monotonic() + 10
        while control.timings[-1].source != "server" and time.monotonic() < until:
            time.sleep(0.01)
            opened = control.act(OBS)
        assert control.timings[-1].source == "server"
        _check_the_episode_goes_on(control, local, seed, opened)


def _check_the_episode_goes_on(control, local, seed: int, opened: np.ndarray) -> None:
    """After the tick that ``opened`` the session (its first draw), a missed, a served and a missed tick
    act on the seeded episode's next draws, fallback ticks included; then the session closes."""
    actions = [opened]
    for miss in (True, False, True):
        control.deadline_s = MISS_S if miss else 0.5
        actions.append(control.act(OBS))
    assert [t.source for t in list(control.timings)[-3:]] == ["local", "server", "local"]
    np.testing.assert_allclose(actions, _episode(local, seed, len(actions)), atol=1e-6)
    control.close()


def _refused_at_session_limit(client: PolicyClient) -> int:
    (limit,) = [limit for limit in client.stats().limits if limit.limit == "sessions"]
    return limit.refused


def test_a_refusal_of_the_opening_tick_read_after_its_deadline_restarts_the_local_noise_all_the_same(
    policy_path, local
):
    """The opening tick refused at the server's session limit drew nothing there, but its refusal came
    after the tick's deadline and was read, as a stale reply, by the next tick, which then opened the
    session and restarted the server's noise: the local fallback's was left one draw ahead."""
    seed = 6
    config = ServeConfig(str(policy_path), port=0, grace_s=0, max_sessions=1, providers=CPU)
    with PolicyServer(config).start() as server, PolicyClient(server.address) as client:
        other = client.session(period_s=0.5, seed=0)
        other.act(OBS)  # the server's one session
        control = client.session(
            period_s=0.5, deadline_s=MISS_S, seed=seed, fallback="local", local_model=str(policy_path)
        )
        control.act(OBS)
        assert (control.timings[-1].source, control.timings[-1].reason) == ("local", "deadline")
        until = time.monotonic() + 10
        while not _refused_at_session_limit(client) and time.monotonic() < until:
            time.sleep(0.01)  # the server has refused the tick (not yet read by the client)
        assert _refused_at_session_limit(client)
        other.close()  # the end of its stream frees the server's one session
        while client.stats().sessions and time.monotonic() < until:
            time.sleep(0.01)
        assert client.stats().sessions == 0
        control.deadline_s = 0.5
        opened = control.act(OBS)  # reads the late refusal, then opens the session
        assert control.timings[-1].source == "server"
        _check_the_episode_goes_on(control, local, seed, opened)


def test_a_tick_interrupted_after_sending_keeps_the_local_fallback_on_the_servers_draws(
    server, policy_path, local, monkeypatch
):
    """A Ctrl-C (KeyboardInterrupt) while act() waits for its reply: the request is on its way and the
    server draws for it, but the local fallback drew nothing, so a node that caught the interrupt and
    ticked on acted, at each later fallback tick, on the draw the server had made a tick earlier."""
    from flowrl_deploy import session_stream

    seed = 6
    waiting = session_stream._next_reply
    interrupt = [False]

    def interrupted_once(stream, until):
        if interrupt[0]:
            interrupt[0] = False
            raise KeyboardInterrupt
        return waiting(stream, until)

    monkeypatch.setattr(session_stream, "_next_reply", interrupted_once)
    with PolicyClient(server.address) as client:
        control = client.session(period_s=0.5, seed=seed, fallback="local", local_model=str(policy_path))
        with control:
            actions = [control.act(OBS) for _ in range(2)]
            interrupt[0] = True
            with pytest.raises(KeyboardInterrupt):
                control.act(OBS)
            for miss in (True, False, True):
                control.deadline_s = MISS_S if miss else 0.5
                actions.append(control.act(OBS))
                assert control.timings[-1].source == ("local" if miss else "server")
    expected = _episode(local, seed, 6)
    np.testing.assert_allclose(actions, expected[:2] + expected[3:], atol=1e-6)  # draw 2: the interrupted tick's
