"""ControlSession: fresh actions, stale replies dropped, fallbacks, watchdog, clamps, reconnect."""

from __future__ import annotations

import queue
import time
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from tiny_policy import ACT_DIM, documented_noise, tiny_contract, write_policy

from flowrl_deploy import client as client_module
from flowrl_deploy.client import PolicyClient, ServiceError, WatchdogError
from flowrl_deploy.codec import encode
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.serve.noise import draw_noise, session_noise

OBS = np.array([0.3, -0.2, 0.1], np.float32)
MISS_S = 1e-7
"""A deadline no reply can meet: the tick is a miss, so the session acts on its fallback."""


def test_stream_actions_follow_the_seeded_session_noise(client, local):
    generator = session_noise(3)
    with client.session(period_s=0.5, seed=3) as control:
        for _ in range(4):
            expected = local.act(OBS[None], draw_noise(generator, 1, ACT_DIM))[0]
            np.testing.assert_allclose(control.act(OBS), expected, atol=1e-6)
        timing = control.timings[-1]
        assert timing.source == "server" and timing.model_version.startswith("v1-")
        assert timing.round_trip_us >= timing.server_us > 0
        control.reset(seed=3)
        np.testing.assert_allclose(
            control.act(OBS), local.act(OBS[None], draw_noise(session_noise(3), 1, ACT_DIM))[0], atol=1e-6
        )


def test_a_late_reply_is_dropped_and_the_fallback_used(client, local):
    generator = session_noise(11)
    with client.session(period_s=0.5, deadline_s=1e-7, seed=11, fallback="zeros") as control:
        np.testing.assert_array_equal(control.act(OBS), np.zeros(ACT_DIM))
        assert control.timings[-1].source == "zeros"
        control.deadline_s = 2.0
        draw_noise(generator, 1, ACT_DIM)  # the first tick consumed one draw on the server
        expected = local.act(OBS[None], draw_noise(generator, 1, ACT_DIM))[0]
        np.testing.assert_allclose(control.act(OBS), expected, atol=1e-6)
        assert control.timings[-1].seq == 2


def test_the_default_deadline_is_half_the_period(client):
    with client.session(period_s=0.5) as control:
        assert control.deadline_s == 0.25
    with client.session(period_s=0.5, deadline_s=0.1) as control:
        assert control.deadline_s == 0.1


def test_hold_is_the_default_fallback_and_repeats_the_last_action(client):
    with client.session(period_s=0.5, seed=4) as control:
        fresh = control.act(OBS)
        assert control.timings[-1].source == "server"
        control.deadline_s = MISS_S
        held = control.act(-OBS)
        assert control.timings[-1].source == "hold"
        np.testing.assert_array_equal(held, fresh)
        assert control.health.misses == 1
        control.reset(seed=4)  # a new episode forgets the last action: nothing to hold yet
        np.testing.assert_array_equal(control.act(OBS), np.zeros(ACT_DIM))
        assert control.timings[-1].source == "hold"


def test_local_fallback_runs_the_served_policy_with_the_seeded_noise(client, policy_path, local):
    seed = 5
    zero_noise = local.act(OBS[None], np.zeros((1, ACT_DIM), np.float32))[0]
    noise = documented_noise(seed)
    with client.session(
        period_s=0.5, deadline_s=MISS_S, seed=seed, fallback="local", local_model=str(policy_path)
    ) as control:
        for _ in range(3):  # each miss draws the next noise block
            expected = local.act(OBS[None], noise.standard_normal((1, ACT_DIM), dtype=np.float32))[0]
            action = control.act(OBS)
            assert control.timings[-1].source == "local"
            np.testing.assert_allclose(action, expected, atol=1e-6)
            assert not np.allclose(action, zero_noise, atol=1e-3)
        control.reset(seed=seed)  # a new episode restarts the local noise from the seed too
        first = documented_noise(seed).standard_normal((1, ACT_DIM), dtype=np.float32)
        np.testing.assert_allclose(control.act(OBS), local.act(OBS[None], first)[0], atol=1e-6)


def test_watchdog_raises_when_the_last_fresh_action_is_too_old(client):
    with client.session(period_s=0.5, seed=0, max_staleness_s=0.01) as control:
        control.act(OBS)
        assert control.timings[-1].source == "server"
        time.sleep(0.02)
        control.deadline_s = MISS_S
        with pytest.raises(WatchdogError, match="no fresh action for"):
            control.act(OBS)


def test_clock_offset_on_loopback_is_within_the_round_trip(client):
    with client.session(period_s=0.5, seed=0) as control:
        for _ in range(5):
            control.act(OBS)
        for timing in control.timings:
            assert timing.source == "server"
            assert abs(timing.clock_offset_us) < timing.round_trip_us


def test_clock_offset_is_server_minus_client_time(client):
    # A server clock 5 s ahead, 0.25 ms on the wire each way and 0.5 ms on the server: offset +5 s.
    # (On loopback both clocks agree, so a flipped sign would only flip a near-zero offset.)
    with client.session(period_s=0.5) as control:
        sent = time.time_ns() - 1_000_000
        received = sent + 5_000_000_000 + 250_000
        reply = pb.StreamActReply(
            seq=1, client_send_unix_ns=sent, server_recv_unix_ns=received, server_send_unix_ns=received + 500_000
        )
        timing = control._timing(reply, time.perf_counter() - 1e-3)
    assert timing.clock_offset_us == pytest.approx(5e6, abs=5e4)
    assert timing.server_us == 500.0
    assert timing.round_trip_us >= 1e3


def test_watchdog_raises_after_consecutive_misses(client):
    with client.session(period_s=0.5, deadline_s=1e-7, max_consecutive_misses=2) as control:
        control.act(OBS)
        with pytest.raises(WatchdogError, match="2 control ticks in a row"):
            control.act(OBS)


def test_action_rate_clamp(client):
    with client.session(period_s=0.01, seed=0, max_rate=1.0) as control:
        first = control.act(OBS)
        second = control.act(-OBS * 5)
        assert np.all(np.abs(second - first) <= 0.01 + 1e-6)


def test_pinned_contract_mismatch_is_raised_with_the_difference(client):
    other = tiny_contract(control_period_s=0.05)
    with client.session(period_s=0.5, contract=other) as control:
        for _ in range(2):  # a control loop that catches the refusal and tries again is refused again
            with pytest.raises(ServiceError) as info:
                control.act(OBS)
            assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert "control_period_s" in str(info.value)


def test_local_fallback_then_reconnect_after_a_server_restart(policy_path, local):
    config = ServeConfig(str(policy_path), port=0, grace_s=0.1)
    first = PolicyServer(config).start()
    port = first.port
    restarted = None
    try:
        with PolicyClient(first.address) as client:
            control = client.session(
                period_s=0.05, seed=1, fallback="local", local_model=str(policy_path), backoff_s=(0.02, 0.1)
            )
            control.act(OBS)
            assert control.timings[-1].source == "server"
            first.stop(grace=0)
            first_local = documented_noise(1).standard_normal((1, ACT_DIM), dtype=np.float32)
            np.testing.assert_allclose(control.act(OBS), local.act(OBS[None], first_local)[0], atol=1e-6)
            assert control.timings[-1].source == "local"
            restarted = PolicyServer(ServeConfig(str(policy_path), port=port, grace_s=0.1)).start()
            until = time.monotonic() + 10
            while control.timings[-1].source != "server" and time.monotonic() < until:
                control.act(OBS)
                time.sleep(0.02)
            assert control.timings[-1].source == "server"
            assert control.health.misses >= 1
            control.close()
    finally:
        first.stop(grace=0)
        if restarted is not None:
            restarted.stop(grace=0)


def test_local_fallback_needs_the_model(client):
    from flowrl_deploy.errors import FlowRLError

    with pytest.raises(FlowRLError, match="local_model"):
        client.session(period_s=0.02, fallback="local")


def test_local_fallback_must_be_the_served_policy(client, tmp_path):
    from flowrl_deploy.errors import FlowRLError

    other = write_policy(tmp_path / "other.onnx", action_names=("up", "down"))
    with pytest.raises(FlowRLError, match=r"is not the served policy \(action_names"):
        client.session(period_s=0.02, fallback="local", local_model=str(other))


class FlakyServer:
    """Stands in for the StreamAct streams of a server that goes down and up, on a clock the test moves.

    ``opened`` holds the clock time of every stream the session opened (each reconnection try).
    A stream of the server while down breaks at its first request; while up it answers every request.
    """

    def __init__(self, monkeypatch) -> None:
        self.up = False
        self.now = 1000.0
        self.opened: list[float] = []
        monkeypatch.setattr(client_module, "_Stream", self.stream)
        clock = SimpleNamespace(
            monotonic=lambda: self.now, perf_counter=time.perf_counter, time_ns=time.time_ns, sleep=time.sleep
        )
        monkeypatch.setattr(client_module, "time", clock)

    def stream(self, _client: PolicyClient) -> SimpleNamespace:
        self.opened.append(self.now)
        replies = queue.SimpleQueue()

        def put(request: pb.StreamActRequest) -> None:
            if self.up:
                replies.put(pb.StreamActReply(seq=request.seq, action=encode(np.zeros(ACT_DIM, np.float32))))
            else:
                replies.put(client_module._END)

        error = ServiceError(grpc.StatusCode.UNAVAILABLE, "the server closed the stream")
        return SimpleNamespace(requests=SimpleNamespace(put=put), replies=replies, error=error, close=lambda: None)

    def run(self, control, seconds: float, tick_s: float = 0.002) -> list[float]:
        """Tick ``control`` for ``seconds``; the times of the reconnection tries, from the start of the run."""
        start, tries = self.now, len(self.opened)
        for _ in range(round(seconds / tick_s)):
            control.act(OBS)
            self.now += tick_s
        return [t - start for t in self.opened[tries:]]


RECONNECT_WAITS = [0.05, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
"""The default backoff (0.05 s, 1.0 s) after a break: a first try after 0.05 s, then tries 0.05, 0.1, 0.2 …
up to 1 s apart."""


def test_reconnect_backoff_doubles_up_to_its_cap_and_restarts_after_a_fresh_reply(client, monkeypatch):
    """While the server is down the tries space out; once a reply came through, the next outage is
    retried as quickly as the first, not after the grown interval (1 s of fallback actions)."""
    server = FlakyServer(monkeypatch)
    control = client.session(period_s=0.002, fallback="zeros")
    outage = server.run(control, 4.0)  # the session's first stream breaks at once
    assert np.diff([0.0, *outage]) == pytest.approx(RECONNECT_WAITS, abs=0.0025)
    assert {t.source for t in control.timings} == {"zeros"}
    server.up = True
    assert len(server.run(control, 0.7)) == 1  # the next try (at 4.6 s) reconnects, and the stream stays open
    assert control.timings[-1].source == "server"
    server.up = False  # a second outage soon after: the try that reconnected left no 1 s wait behind
    second = server.run(control, 1.0)
    assert np.diff([0.0, *second]) == pytest.approx(RECONNECT_WAITS[:5], abs=0.0025)
    control.close()
