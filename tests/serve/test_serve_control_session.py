"""ControlSession: fresh actions, stale replies dropped, fallbacks, watchdog, clamps, reconnect;
settings checked at construction, one control loop per session, reset, close."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import queue
import re
import shutil
import threading
import time
import warnings
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from tiny_policy import ACT_DIM, documented_noise, tiny_contract, write_policy

from flowrl_deploy import session as session_module
from flowrl_deploy import session_stream
from flowrl_deploy.client import ClientClosedError, ContractMismatchError, PolicyClient, ServiceError
from flowrl_deploy.codec import TensorError, encode
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.noise import draw_noise, session_noise
from flowrl_deploy.policy import OnnxPolicy
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.session import WatchdogError

OBS = np.array([0.3, -0.2, 0.1], np.float32)

SERVER_CLOSED = "the server closed the stream, as it does when stopping or restarting"
"""What the warning says when a stream ended without a reason of its own: the server stopping (it cancels its
idle streams, gRPC's details then only repeat the code, and ends its busy ones with an OK status)."""
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


def test_a_late_reply_is_dropped_and_the_fallback_used(client, local, caplog):
    generator = session_noise(11)
    with client.session(period_s=0.5, deadline_s=1e-7, seed=11, fallback="zeros") as control:
        caplog.clear()  # the period's warning
        np.testing.assert_array_equal(control.act(OBS), np.zeros(ACT_DIM))
        assert (control.timings[-1].source, control.timings[-1].reason) == ("zeros", "deadline")
        control.deadline_s = 2.0
        draw_noise(generator, 1, ACT_DIM)  # the first tick consumed one draw on the server
        expected = local.act(OBS[None], draw_noise(generator, 1, ACT_DIM))[0]
        np.testing.assert_allclose(control.act(OBS), expected, atol=1e-6)
        assert control.timings[-1].seq == 2
        assert (control.timings[-1].source, control.timings[-1].reason) == ("server", "")
        assert control.health.last_fallback_reason == "deadline"  # the latest fallback's, kept
    assert caplog.records == []  # a slow tick is the watchdog's business, not logged


def _client_records(caplog) -> list[logging.LogRecord]:
    """What the client library logged (an in-process server logs to ``flowrl.serve`` beside it)."""
    return [record for record in caplog.records if record.name == "flowrl.client"]


def test_a_session_over_the_servers_limit_says_why_it_falls_back_and_logs_it_once(policy_path, caplog):
    """A second robot on `flowrl serve --max-sessions 1` acted on zeros every tick and nothing,
    on the client or the server, said why."""
    config = ServeConfig(str(policy_path), port=0, grace_s=0, max_sessions=1)
    with PolicyServer(config).start() as server, PolicyClient(server.address) as client:
        first = client.session(period_s=0.5, seed=0)
        second = client.session(period_s=0.5, fallback="zeros")
        first.act(OBS)  # the server's one session
        caplog.clear()  # the period's warnings
        with caplog.at_level(logging.INFO, logger="flowrl.client"):
            for _ in range(50):
                np.testing.assert_array_equal(second.act(OBS), np.zeros(ACT_DIM))
            assert {(t.source, t.reason) for t in second.timings} == {("zeros", "RESOURCE_EXHAUSTED")}
            assert second.health.last_fallback_reason == "RESOURCE_EXHAUSTED"
            first.act(OBS)
            assert first.timings[-1].reason == "" and first.health.last_fallback_reason == ""
            (warning,) = _client_records(caplog)  # once, not once per tick (the server logs its own)
            assert warning.levelno == logging.WARNING
            assert warning.getMessage() == (
                f"control session {second.session_id} acts on its zeros fallback: the server refuses its ticks "
                "(RESOURCE_EXHAUSTED: session limit of 1 reached)"
            )
            first.close()  # the end of its stream frees the server's one session
            until = time.monotonic() + 10
            while second.timings[-1].source != "server" and time.monotonic() < until:
                second.act(OBS)
            assert second.timings[-1].reason == ""
            misses = second.health.misses
        second.close()
    records = _client_records(caplog)
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO]
    assert records[1].getMessage() == (
        f"control session {second.session_id} has fresh actions again after {misses} ticks on its zeros "
        "fallback (RESOURCE_EXHAUSTED)"
    )


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


def test_the_fallback_is_fixed_when_the_session_is_made_and_says_so_when_reassigned(client, policy_path):
    """What a fallback tick runs is chosen (and a local model loaded) when the session is made: an
    assignment that would leave ``fallback`` naming another than the one that runs is refused."""
    with client.session(period_s=0.5, seed=4, fallback="zeros") as control:
        assert control.fallback == "zeros" and control.local is None
        with pytest.raises(AttributeError):
            control.fallback = "local"
        with pytest.raises(AttributeError):
            control.local = None
        control.deadline_s = MISS_S
        control.act(OBS)
        assert control.timings[-1].source == "zeros"
    with client.session(period_s=0.5, seed=4, fallback="local", local_model=str(policy_path)) as control:
        assert control.fallback == "local" and control.local is not None


def test_returned_actions_are_the_callers_own_so_editing_them_never_changes_what_is_held(client):
    """A caller scaling its action in place (``a *= 0.5``) must not scale the action held afterwards."""
    with client.session(period_s=0.5, seed=4, max_rate=2.0) as control:  # max_delta 1.0, a 250 ms deadline
        for _ in range(2):  # the first is the server's own reply; the second went through the rate clamp
            action = control.act(OBS)
            assert control.timings[-1].source == "server" and action.flags.writeable
            returned = action.copy()
            action *= 0.5
        control.deadline_s = MISS_S
        for _ in range(3):
            held = control.act(OBS)
            assert control.timings[-1].source == "hold"
            np.testing.assert_array_equal(held, returned)
            held *= 0.5


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


def test_a_local_fallback_of_a_deterministic_export_acts_without_noise(tmp_path):
    """A `--deterministic` export takes no noise input: its first missed tick must act, not crash."""
    path = write_policy(tmp_path / "deterministic.onnx", deterministic=True)
    deterministic = OnnxPolicy(path, providers=["CPUExecutionProvider"])  # as the local fallback runs
    assert not deterministic.takes_noise
    with (
        PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as server,
        PolicyClient(server.address) as client,
        client.session(period_s=0.5, deadline_s=MISS_S, seed=3, fallback="local", local_model=str(path)) as control,
    ):
        for _ in range(2):
            action = control.act(OBS)
            assert control.timings[-1].source == "local"
            np.testing.assert_allclose(action, deterministic.act(OBS[None])[0], atol=1e-6)


def test_the_local_fallback_acts_as_flowrl_eval_of_the_same_file(client, policy_path):
    """`flowrl control --seed S` reproduces `flowrl eval --seed S`: both act through one seeded policy."""
    from flowrl_deploy.cli.eval import _onnx_policy

    eval_act, *_ = _onnx_policy(policy_path, 9, False)
    observations = np.random.default_rng(0).uniform(-1, 1, (5, OBS.size)).astype(np.float32)
    with client.session(
        period_s=0.5, deadline_s=MISS_S, seed=9, fallback="local", local_model=str(policy_path)
    ) as control:
        actions = [control.act(obs) for obs in observations]
        assert [t.source for t in control.timings] == ["local"] * len(observations)
    np.testing.assert_allclose(actions, [eval_act(obs) for obs in observations], atol=1e-6)


def test_local_fallback_noise_keeps_in_step_with_the_ticks_so_a_run_with_misses_is_the_seeded_episode(
    client, policy_path
):
    """The server draws one noise block per tick it is sent, late or not; the local fallback drew
    its k-th block at its k-th fallback, so a miss at tick t acted on another draw than the server's
    for tick t and a run with misses was not `flowrl eval --seed S`'s episode."""
    from flowrl_deploy.policy import SeededPolicy

    seed = 6
    observations = np.random.default_rng(1).uniform(-1, 1, (7, OBS.size)).astype(np.float32)
    missed = [False, True, False, True, True, False, True]
    seeded = SeededPolicy(policy_path, seed, providers=["CPUExecutionProvider"])  # as the fallback and server run
    with client.session(period_s=0.5, seed=seed, fallback="local", local_model=str(policy_path)) as control:
        for obs, miss in zip(observations, missed, strict=True):
            control.deadline_s = MISS_S if miss else 2.0
            np.testing.assert_allclose(control.act(obs), seeded.act(obs), atol=1e-6)
            assert control.timings[-1].source == ("local" if miss else "server")
        control.reset(seed=seed)  # a new episode: both streams restart from the seed
        seeded.reseed(seed)
        for obs, miss in zip(observations, missed[::-1], strict=True):
            control.deadline_s = MISS_S if miss else 2.0
            np.testing.assert_allclose(control.act(obs), seeded.act(obs), atol=1e-6)


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
    with pytest.raises(ContractMismatchError, match="control_period_s"):  # when the session is made
        client.session(period_s=0.5, contract=other)
    with client.session(period_s=0.5) as control:
        control._contract_hash, control._contract_json = other.hash(), json.dumps(other.to_dict())  # as if served since
        for _ in range(2):  # a control loop that catches the refusal and tries again is refused again
            with pytest.raises(ServiceError) as info:
                control.act(OBS)
            assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert "control_period_s" in str(info.value)


def test_local_fallback_then_reconnect_after_a_server_restart(policy_path, local, caplog):
    config = ServeConfig(str(policy_path), port=0, grace_s=0.1)
    first = PolicyServer(config).start()
    port = first.port
    restarted = None
    try:
        with PolicyClient(first.address) as client:
            control = client.session(
                period_s=0.5, seed=1, fallback="local", local_model=str(policy_path), backoff_s=(0.02, 0.1)
            )  # a 250 ms deadline: the stream-opening tick took up to 0.1 s at load 12
            control.act(OBS)
            assert control.timings[-1].source == "server"
            caplog.clear()  # the period's warning
            first.stop(grace=0)
            noise = documented_noise(1)
            noise.standard_normal((1, ACT_DIM), dtype=np.float32)  # tick 1's, served
            second = noise.standard_normal((1, ACT_DIM), dtype=np.float32)  # tick 2 falls back on its own draw
            with caplog.at_level(logging.INFO, logger="flowrl.client"):
                np.testing.assert_allclose(control.act(OBS), local.act(OBS[None], second)[0], atol=1e-6)
            assert control.timings[-1].source == "local"
            assert control.health.last_fallback_reason == "disconnected"
            restarted = PolicyServer(ServeConfig(str(policy_path), port=port, grace_s=0.1)).start()
            until = time.monotonic() + 10
            with caplog.at_level(logging.INFO, logger="flowrl.client"):
                while control.timings[-1].source != "server" and time.monotonic() < until:
                    control.act(OBS)
                    time.sleep(0.02)
            assert control.timings[-1].source == "server"
            assert control.health.misses >= 1
            down = [t.reason for t in control.timings if t.source == "local"]
            assert down[0] == "disconnected" and set(down) <= {"disconnected", "deadline"}  # a retry may time out
            warning, back = caplog.records  # the outage once, and the return
            assert warning.levelno == logging.WARNING
            # a stopped server cancels its streams, in gRPC's words "CANCELLED" or "Cancelling all calls"
            assert re.fullmatch(
                f"control session {control.session_id} acts on its local fallback: no stream to the server, "
                rf"reconnecting with backoff \((CANCELLED|UNAVAILABLE): {SERVER_CLOSED}\)",
                warning.getMessage(),
            ), warning.getMessage()
            assert back.levelno == logging.INFO and back.getMessage().endswith("on its local fallback (disconnected)")
            control.close()
    finally:
        first.stop(grace=0)
        if restarted is not None:
            restarted.stop(grace=0)


def test_local_fallback_needs_the_model(client):
    with pytest.raises(FlowRLError, match="local_model"):
        client.session(period_s=0.02, fallback="local")


def test_local_fallback_must_be_the_served_policy(client, tmp_path):
    other = write_policy(tmp_path / "other.onnx", action_names=("up", "down"))
    with pytest.raises(FlowRLError, match=r"is not the served policy \(action_names"):
        client.session(period_s=0.02, fallback="local", local_model=str(other))


def test_a_local_fallback_of_other_weights_is_accepted_with_a_warning(client, policy_path, tmp_path, caplog):
    """Another seed's weights share the contract: the fallback would silently act on another policy."""
    other = write_policy(tmp_path / "other.onnx", scale=2.0)  # the same contract, other weights
    copy = shutil.copy(policy_path, tmp_path / "copy.onnx")  # the served file under another name
    version = client.spec().model_version
    with caplog.at_level(logging.WARNING, logger="flowrl.client"):
        client.session(period_s=0.02, fallback="local", local_model=str(copy)).close()
        assert caplog.records == []
        client.session(period_s=0.02, fallback="local", local_model=str(other)).close()
    (record,) = caplog.records
    assert record.name == "flowrl.client" and record.levelno == logging.WARNING
    assert record.getMessage().startswith(
        f"the local fallback model {other} (sha256 {hashlib.sha256(other.read_bytes()).hexdigest()[:10]}) is not "
        f"the file the server serves (model version {version}): the contracts match"
    )


def test_a_period_other_than_the_served_control_period_is_accepted_with_a_warning(client, caplog):
    assert client.spec().control_period_s == pytest.approx(0.02)
    with caplog.at_level(logging.WARNING, logger="flowrl.client"):
        client.session(period_s=0.02).close()
        assert caplog.records == []
        with client.session(period_s=0.01) as control:
            control.act(OBS)  # a warning, not a refusal
    (record,) = caplog.records
    assert record.getMessage() == (
        "period_s 0.01 s (100 Hz) differs from the served policy's control period, 0.02 s (50 Hz)"
    )


class FlakyServer:
    """Stands in for the StreamAct streams of a server that goes down and up, on a clock the test moves.

    ``opened`` holds the clock time of every stream the session opened (each reconnection try), and
    ``sent`` the requests each of those streams was sent. A stream of the server while down breaks at
    its first request (with ``error``); while up it answers every request, with an action or, when
    ``refusal`` is set, that status.
    """

    def __init__(self, monkeypatch) -> None:
        self.up = False
        self.error = ServiceError(grpc.StatusCode.UNAVAILABLE, SERVER_CLOSED)
        self.refusal: grpc.StatusCode | None = None
        self.now = 1000.0
        self.opened: list[float] = []
        self.sent: list[list[pb.StreamActRequest]] = []
        monkeypatch.setattr(session_stream, "StreamCall", self.stream)
        clock = SimpleNamespace(
            monotonic=lambda: self.now, perf_counter=time.perf_counter, time_ns=time.time_ns, sleep=time.sleep
        )
        monkeypatch.setattr(session_stream, "time", clock)  # the reconnection's backoff
        monkeypatch.setattr(session_module, "time", clock)  # the watchdog's staleness

    def stream(self, _client: PolicyClient) -> SimpleNamespace:
        self.opened.append(self.now)
        self.sent.append(sent := [])
        replies = queue.SimpleQueue()

        def put(request: pb.StreamActRequest) -> None:
            sent.append(request)
            if not self.up:
                stream.error = self.error  # as the reader thread sets it when a stream ends
                replies.put(session_stream._END)
            elif self.refusal is not None:
                status = pb.Status(code=self.refusal.value[0], message="refused")
                replies.put(pb.StreamActReply(seq=request.seq, status=status))
            else:
                replies.put(pb.StreamActReply(seq=request.seq, action=encode(np.zeros(ACT_DIM, np.float32))))

        stream = SimpleNamespace(requests=SimpleNamespace(put=put), replies=replies, error=None, close=lambda: None)
        return stream

    def run(self, control, seconds: float, tick_s: float = 0.002) -> list[float]:
        """Tick ``control`` for ``seconds``; the times of the reconnection tries, from the start of the run."""
        start, tries = self.now, len(self.opened)
        for _ in range(round(seconds / tick_s)):
            control.act(OBS)
            self.now += tick_s
        return [t - start for t in self.opened[tries:]]


RECONNECT_WAITS = [0.05, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
"""The default backoff (0.05 s, 1.0 s) after a break: a first try after at most 0.05 s, then tries at
most 0.05, 0.1, 0.2 … up to 1 s apart, each wait drawn from [half, all] of it. Ten waits: as many as
2.9 s of outage can hold when every draw is the shortest (0.8 s to the sixth try, then 0.5 s each)."""


def _within_backoff(waits: list[float], nominal: list[float], tick_s: float = 0.002) -> bool:
    """Each wait (measured in ticks of ``tick_s``) lies in [nominal / 2, nominal]."""
    return len(waits) == len(nominal) and all(
        n / 2 - tick_s <= w <= n + tick_s for w, n in zip(waits, nominal, strict=True)
    )


@pytest.fixture(params=["drawn", "shortest", "longest"])
def jitter(request, monkeypatch) -> str:
    """ControlSession's reconnection waits as its own generator draws them, or each pinned to the
    shortest or the longest wait its equal jitter can draw (half the backoff, or all of it): a test of
    the backoff must hold for every draw, not for those of most runs (the backoff test allowed eight
    tries in 2.9 s, and failed about one run in forty, when the draws were short)."""
    if request.param != "drawn":
        share = 0.0 if request.param == "shortest" else 1.0  # random.uniform(a, b) gives a to b
        pinned = SimpleNamespace(uniform=lambda a, b: a + share * (b - a))
        monkeypatch.setattr(session_stream, "random", SimpleNamespace(Random=lambda: pinned))
    return request.param


def test_reconnect_backoff_doubles_up_to_its_cap_and_restarts_after_a_fresh_reply(client, monkeypatch, jitter):
    """While the server is down the tries space out; once a reply came through, the next outage is
    retried as quickly as the first, not after the grown interval (1 s of fallback actions)."""
    server = FlakyServer(monkeypatch)
    control = client.session(period_s=0.002, fallback="zeros")
    outage = server.run(control, 2.9)  # the session's first stream breaks at once
    waits = np.diff([0.0, *outage]).tolist()
    assert _within_backoff(waits, RECONNECT_WAITS[: len(waits)]) and len(waits) >= 6, waits
    assert {t.source for t in control.timings} == {"zeros"}
    server.up = True
    assert len(server.run(control, 1.1)) == 1  # the next try reconnects, and the stream stays open
    assert control.timings[-1].source == "server"
    server.up = False  # a second outage soon after: the try that reconnected left no 1 s wait behind
    second = server.run(control, 0.5)  # tries within at most 0.05, 0.1, 0.2 and 0.4 s: 1 s were 0 or 1
    waits = np.diff([0.0, *second]).tolist()
    assert _within_backoff(waits, RECONNECT_WAITS[: len(waits)]) and len(waits) >= 3, waits
    control.close()


def test_reconnect_waits_are_jittered_so_a_fleet_does_not_retry_in_step(client, monkeypatch):
    """20 robots that lost a restarting server all retried at the same offsets (+0.05, 0.1, 0.2 … s)
    and hit it within 60 ms; each session now draws its waits from its own generator."""
    outages = []
    for _ in range(3):
        server = FlakyServer(monkeypatch)
        control = client.session(period_s=0.002, fallback="zeros", backoff_s=(0.2, 0.8))
        waits = np.diff([0.0, *server.run(control, 4.0)]).tolist()
        control.close()
        assert _within_backoff(waits[:3], [0.2, 0.2, 0.4]), waits
        assert all(0.4 - 0.002 <= w <= 0.8 + 0.002 for w in waits[3:]), waits  # at the cap: [0.4, 0.8]
        outages.append(waits[:5])
    assert len({tuple(waits) for waits in outages}) == 3  # 2 ms ticks: two equal by chance ~ 1e-8


@pytest.mark.parametrize(
    ("error", "refusal", "reason", "why"),
    [
        ("UNAVAILABLE", None, "disconnected", "no stream to the server, reconnecting with backoff (UNAVAILABLE: "),
        ("CANCELLED", None, "disconnected", "no stream to the server, reconnecting with backoff (CANCELLED: "),
        # a stream beyond the server's --workers is refused as a whole
        ("RESOURCE_EXHAUSTED", None, "RESOURCE_EXHAUSTED", "the server refuses its stream (RESOURCE_EXHAUSTED: "),
        (None, "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED", "the server refuses its ticks (RESOURCE_EXHAUSTED: "),
        (None, "UNAVAILABLE", "UNAVAILABLE", "the server refuses its ticks (UNAVAILABLE: "),
        (None, "DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED", None),  # the server's deadline check: a slow tick
    ],
)
def test_every_fallback_tick_says_why_and_an_outage_or_refusal_is_logged_once(
    client, monkeypatch, caplog, error, refusal, reason, why, jitter
):
    """A robot at 500 Hz logs a 1 s outage once and its end once, not 500 times; a new outage after
    fresh actions is logged again."""
    server = FlakyServer(monkeypatch)
    if error is not None:
        server.error = ServiceError(grpc.StatusCode[error], "gone")
    else:
        server.up, server.refusal = True, grpc.StatusCode[refusal]
    control = client.session(period_s=0.02, fallback="zeros")
    with caplog.at_level(logging.INFO, logger="flowrl.client"):
        server.run(control, 1.0)
        assert {(t.source, t.reason) for t in control.timings} == {("zeros", reason)}
        assert control.health.last_fallback_reason == reason
        server.up, server.refusal = True, None
        server.run(control, 1.0)  # the next reconnection try gets fresh actions
        assert control.timings[-1].reason == ""
        server.up, server.error = False, ServiceError(grpc.StatusCode.UNAVAILABLE, "gone")
        server.run(control, 0.01)
    control.close()
    name = f"control session {control.session_id}"
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    again = (
        logging.WARNING,
        f"{name} acts on its zeros fallback: no stream to the server, reconnecting with backoff (UNAVAILABLE: gone)",
    )
    if why is None:
        assert messages == [again]
        return
    misses = next(i for i, t in enumerate(control.timings) if t.source == "server")  # ticks before the first fresh
    assert messages == [
        (logging.WARNING, f"{name} acts on its zeros fallback: {why}{'gone' if error else 'refused'})"),
        (logging.INFO, f"{name} has fresh actions again after {misses} ticks on its zeros fallback ({reason})"),
        again,
    ]


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (ServiceError(grpc.StatusCode.CANCELLED, "CANCELLED"), f"CANCELLED: {SERVER_CLOSED}"),
        (ServiceError(grpc.StatusCode.CANCELLED, ""), f"CANCELLED: {SERVER_CLOSED}"),
        (ServiceError(grpc.StatusCode.UNAVAILABLE, "Cancelling all calls"), f"UNAVAILABLE: {SERVER_CLOSED}"),
        (ServiceError(grpc.StatusCode.CANCELLED, "Cancelled by a proxy"), "CANCELLED: Cancelled by a proxy"),
        (ServiceError(grpc.StatusCode.UNAVAILABLE, "Socket closed"), "UNAVAILABLE: Socket closed"),
    ],
)
def test_a_stream_the_server_closed_on_stopping_is_worded_for_a_reader(client, monkeypatch, caplog, error, said):
    """A server stopped gracefully cancels its idle streams, and the warning read '(CANCELLED: CANCELLED)'."""
    server = FlakyServer(monkeypatch)
    server.error = error
    control = client.session(period_s=0.02, fallback="hold")
    with caplog.at_level(logging.WARNING, logger="flowrl.client"):
        server.run(control, 0.01)
    control.close()
    assert [r.getMessage() for r in caplog.records] == [
        f"control session {control.session_id} acts on its hold fallback: no stream to the server, "
        f"reconnecting with backoff ({said})"
    ]


def test_a_stream_a_server_stopping_with_a_grace_period_ends_is_worded_alike(policy_path, caplog):
    """Such a server ends the stream OK when a request is in flight, else cancels it: either reads the same."""
    with (
        PolicyServer(ServeConfig(str(policy_path), port=0, grace_s=1.0)).start() as server,
        PolicyClient(server.address) as client,
        client.session(period_s=0.02, fallback="hold") as control,
    ):
        # the tick that opens the stream (up to 0.1 s at load 12, past 50 Hz's 10 ms): a fresh action however
        # loaded the machine
        deadline_s, control.deadline_s = control.deadline_s, 10.0
        control.act(OBS)
        assert control.timings[-1].source == "server"
        control.deadline_s = deadline_s
        server.stop(grace=1.0)
        with caplog.at_level(logging.WARNING, logger="flowrl.client"):
            until = time.monotonic() + 10
            while control.health.last_fallback_reason != "disconnected" and time.monotonic() < until:
                control.act(OBS)
                time.sleep(0.02)
    (warning,) = caplog.records
    assert re.fullmatch(
        f"control session {control.session_id} acts on its hold fallback: no stream to the server, "
        rf"reconnecting with backoff \((UNAVAILABLE|CANCELLED): {SERVER_CLOSED}\)",
        warning.getMessage(),
    ), warning.getMessage()


def test_a_reopened_stream_sends_the_seed_of_the_latest_reset_and_the_pin_with_its_first_request(
    client, monkeypatch, jitter
):
    """The server restarts a reconnected session's noise from its seed, and checks its pin, only
    when the new stream's first request carries them; later requests of a stream carry neither."""
    server = FlakyServer(monkeypatch)
    server.up = True
    pin = client.spec().contract_hash
    control = client.session(period_s=0.02, seed=5, fallback="zeros", contract_hash=pin)
    server.run(control, 0.004)  # two ticks on one stream
    first, second = server.sent[-1]
    assert (first.seed, first.contract_hash) == (5, pin)
    assert not second.HasField("seed") and not second.contract_hash
    for seed in (5, 6):
        server.up = False
        server.run(control, 0.002)  # the stream breaks
        server.up = True
        server.run(control, 0.1)  # the session reconnects (after 0.05 s)
        assert control.timings[-1].source == "server"
        first, second, *_ = server.sent[-1]
        assert (first.seed, first.contract_hash) == (seed, pin)
        assert not second.HasField("seed")
        control.reset(seed=6)  # the server's own Reset; a stream opened later restarts the noise from 6
    control.close()


def test_each_request_gives_the_server_the_time_left_until_the_ticks_deadline(client, monkeypatch):
    server = FlakyServer(monkeypatch)
    server.up = True
    with client.session(period_s=0.5, deadline_s=0.2) as control:
        control.act(OBS)
    (request,) = server.sent[-1]
    assert 0 < request.timeout_us <= 0.2e6  # 0 would be no deadline: the server would run a late request


def test_a_fresh_action_restarts_the_count_of_misses_in_a_row(client):
    with client.session(period_s=0.5, seed=0, max_consecutive_misses=2) as control:
        control.deadline_s = MISS_S
        control.act(OBS)
        control.deadline_s = 0.25
        control.act(OBS)
        assert control.health.consecutive_misses == 0
        control.deadline_s = MISS_S
        control.act(OBS)  # one miss since the fresh action: no WatchdogError
        assert [t.source for t in control.timings] == ["hold", "server", "hold"]
        assert (control.health.consecutive_misses, control.health.misses) == (1, 2)


def test_the_zeros_fallback_after_a_fresh_action_is_zeros_not_the_last_action(client):
    with client.session(period_s=0.5, seed=0, fallback="zeros") as control:
        assert np.any(control.act(OBS) != 0) and control.timings[-1].source == "server"
        control.deadline_s = MISS_S
        for _ in range(2):
            action = control.act(OBS)
            assert control.timings[-1].source == "zeros"
            np.testing.assert_array_equal(action, np.zeros(ACT_DIM))
            action += 1.0  # the caller's own copy: the next fallback is zeros still


def test_the_rate_clamp_applies_to_fallback_actions_too(client):
    """A zeros fallback after a large action would jump the actuators by the whole action at once."""
    with client.session(period_s=0.5, seed=0, fallback="zeros", max_rate=0.02) as control:
        first = control.act(OBS * 50)
        assert control.timings[-1].source == "server" and np.any(np.abs(first) > 0.1)
        control.deadline_s = MISS_S
        second = control.act(OBS)
        assert control.timings[-1].source == "zeros"
        assert np.all(np.abs(second - first) <= 0.01 + 1e-6)  # max_rate * period_s
        assert np.all(np.abs(second) < np.abs(first))  # moving towards zeros


def test_a_session_pinning_a_contract_pins_its_hash_for_reset_too(client):
    other = tiny_contract(control_period_s=0.05)
    with client.session(period_s=0.5, contract=tiny_contract()) as control:
        assert control.contract_hash == tiny_contract().hash()
        control._contract_hash, control._contract_json = other.hash(), json.dumps(other.to_dict())  # as if served since
        with pytest.raises(ContractMismatchError) as info:
            control.reset(seed=1)
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION


NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("settings", "why"),
    [
        # NaN made every action NaN; a negative rate dragged the action down by it every tick
        *[({"max_rate": v}, f"max_rate must be a finite number > 0, got {v:g}") for v in (NAN, -1.0, 0, INF)],
        *[
            ({"period_s": v}, f"period_s must lie in [0.0001, 10] s (a control rate of 0.1 to 10000 Hz), got {w}")
            for v, w in ((NAN, "nan"), (INF, "inf"), (1e-9, "1e-09"), (0, "0"), (11, "11"), ("0.02", "'0.02'"))
        ],
        # 0 or less: a fallback on every tick from a healthy server; NaN/inf: a bare ValueError in act
        *[({"deadline_s": v}, f"deadline_s must be a finite number > 0, got {v:g}") for v in (0, -1, NAN, INF)],
        (
            {"deadline_s": 0.6},
            "deadline_s 0.6 is longer than the control period, 500 ms at 2 Hz: a tick would wait past the next one",
        ),
        # NaN turned the watchdog off
        *[({"max_staleness_s": v}, f"max_staleness_s must be a finite number > 0, got {v:g}") for v in (NAN, 0, -1)],
        *[
            ({"max_consecutive_misses": v}, f"max_consecutive_misses must be an integer >= 1 or None, got {v:g}")
            for v in (0, -1, 1.5)
        ],
        # a wrong length raised IndexError on every tick of an outage
        ({"backoff_s": (0.05,)}, "backoff_s must be two numbers of seconds (first, longest), got (0.05,)"),
        ({"backoff_s": (0, 0)}, "backoff_s must be a finite number > 0, got 0"),
        ({"backoff_s": (-1, -1)}, "backoff_s must be a finite number > 0, got -1"),
        ({"backoff_s": (0.05, INF)}, "backoff_s must be a finite number > 0, got inf"),
        ({"backoff_s": (1.0, 0.5)}, "backoff_s must have first <= longest, got (1, 0.5)"),
        *[
            ({"reset_timeout_s": v}, f"reset_timeout_s must be a number of seconds in (0, 86400], got {v:g}")
            for v in (0, NAN)
        ],
        ({"max_timings": 0}, "max_timings must be an integer >= 1 or None (all), got 0"),
        ({"fallback": "later"}, "fallback must be hold, zeros or local, got 'later'"),
        ({"fallback": "local"}, "fallback='local' needs local_model (the ONNX file the server serves)"),
        (
            {"local_model": "policy.onnx"},
            "local_model is used only with fallback='local' (fallback is 'hold'); add fallback='local', or drop",
        ),
    ],
)
def test_a_bad_setting_is_refused_at_construction(client, settings, why):
    with pytest.raises(FlowRLError, match=re.escape(why)):
        client.session(**{"period_s": 0.5, **settings})


def test_settings_at_their_limits_are_accepted(client):
    with client.session(
        period_s=1e-4, deadline_s=1e-4, max_consecutive_misses=1, max_staleness_s=1e-3, backoff_s=(0.1, 0.1)
    ) as control:
        assert control.deadline_s == control.period_s == 1e-4
        assert control.reset_timeout_s == 1.0  # the default: a reset is between episodes, not in a tick
    with client.session(period_s=10.0, max_rate=1e-9, max_timings=None) as control:
        assert control.reset_timeout_s == 1.0 and control.timings.maxlen is None


@pytest.mark.parametrize(
    ("obs", "why"),
    [
        (np.zeros((2, 3)), r"obs: shape \[2, 3\] does not match \[3\] or \[1, 3\]"),  # was named [1, 6]
        (np.zeros((3, 1)), r"obs: shape \[3, 1\]"),
        (1.0, r"obs: shape \[\]"),
        ([0.1, NAN, 0.2], "obs: holds NaN, infinite or beyond-float32 values"),
        ([0.1, 1e39, 0.2], "obs: holds NaN, infinite or beyond-float32 values"),  # was said to be NaN or Inf
        (["a", "b", "c"], "obs: dtype <U1 is not accepted"),
        (np.array([True, False, True]), "obs: dtype bool is not accepted"),  # were sent as 1.0 / 0.0
        (np.array([1 + 2j, 0, 0]), "obs: dtype complex128 is not accepted"),  # lost its imaginary part
    ],
)
def test_a_bad_observation_is_refused_naming_its_shape_even_on_a_missed_tick(client, obs, why):
    with client.session(period_s=0.5, deadline_s=MISS_S) as control:  # was a silent fallback
        with warnings.catch_warnings(), pytest.raises(TensorError, match=why):
            warnings.simplefilter("error")  # 1e39 printed numpy's "overflow encountered in cast" first
            control.act(obs)
        control.act(OBS[None])  # [1, obs_dim] is one observation too


def test_zeros_fallback_is_clipped_into_bounds_that_exclude_zero(client, monkeypatch):
    info = client.spec()
    bounds = {"action_low": np.array([0.5, -2.0], np.float32), "action_high": np.array([1.0, -1.0], np.float32)}
    monkeypatch.setattr(client, "spec", lambda: dataclasses.replace(info, **bounds))
    for fallback in ("zeros", "hold"):  # hold has nothing to hold yet on the first tick
        with client.session(period_s=0.5, deadline_s=MISS_S, fallback=fallback) as control:
            np.testing.assert_array_equal(control.act(OBS), [0.5, -1.0])
            assert control.timings[-1].source == fallback


def test_a_second_caller_is_refused_while_a_tick_waits_and_the_tick_gets_its_own_action(client, monkeypatch):
    """Two threads on one session used to swap actions (the sequence number was shared)."""
    sent, replies = queue.SimpleQueue(), queue.SimpleQueue()
    stream = SimpleNamespace(requests=SimpleNamespace(put=sent.put), replies=replies, error=None, close=lambda: None)
    monkeypatch.setattr(session_stream, "StreamCall", lambda _client: stream)
    control = client.session(period_s=5.0, deadline_s=5.0)
    got = {}
    loop = threading.Thread(target=lambda: got.update(action=control.act(OBS)))
    loop.start()
    request = sent.get(timeout=5)  # the loop's tick now waits for its reply
    for other_call in (lambda: control.act(-OBS), lambda: control.reset(seed=1)):
        with pytest.raises(FlowRLError, match="a ControlSession takes calls from any thread, one at a time"):
            other_call()
    mine = np.full(ACT_DIM, 0.5, np.float32)
    replies.put(pb.StreamActReply(seq=request.seq, action=encode(mine)))
    loop.join(timeout=5)
    np.testing.assert_array_equal(got["action"], mine)
    assert [t.source for t in control.timings] == ["server"] and sent.empty()
    control.close()


def test_act_and_reset_after_close_are_refused(client):
    control = client.session(period_s=0.5, seed=0)
    control.act(OBS)
    control.close()
    control.close()  # twice is fine
    for method in ("act", "reset"):
        with pytest.raises(FlowRLError, match=rf"ControlSession.{method} after close\(\)"):
            control.act(OBS) if method == "act" else control.reset(seed=0)
    assert control._stream is None  # no stream was opened again


class _Frozen(grpc.RpcError):
    """What a call to a frozen server ends with."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return "Deadline Exceeded"


def test_a_failed_reset_waits_at_most_reset_timeout_and_changes_nothing(client, policy_path, local, monkeypatch):
    waits = []

    def frozen(request, timeout, metadata):
        waits.append(timeout)
        raise _Frozen()

    seed, noise = 5, documented_noise(5)
    with client.session(
        period_s=0.02, deadline_s=MISS_S, seed=seed, fallback="local", local_model=str(policy_path)
    ) as control:
        first = control.act(OBS)
        monkeypatch.setattr(client.stub, "Reset", frozen)
        with pytest.raises(ServiceError, match="DEADLINE_EXCEEDED"):
            control.reset(seed=9)
        assert (
            len(waits) == 1 and 0 < waits[0] <= 1.0
        )  # bounded (a frozen server held reset for the client's whole deadline)
        assert control.seed == seed
        np.testing.assert_array_equal(control.last_action, first)
        noise.standard_normal((1, ACT_DIM), dtype=np.float32)  # the first tick's draw
        expected = local.act(OBS[None], noise.standard_normal((1, ACT_DIM), dtype=np.float32))[0]
        np.testing.assert_allclose(control.act(OBS), expected, atol=1e-6)  # the local noise was not restarted
    with client.session(period_s=0.02, reset_timeout_s=0.005) as control, pytest.raises(ServiceError):
        control.reset(seed=9)
    assert 0 < waits[-1] <= 0.005  # the wait for the last tick's reply and Reset share reset_timeout_s


def test_timings_keep_the_most_recent_ticks(client):
    with client.session(period_s=0.5, deadline_s=MISS_S) as control:
        assert control.timings.maxlen == 100_000  # was a list growing by 329 B a tick
    with client.session(period_s=0.5, deadline_s=MISS_S, max_timings=3) as control:
        for _ in range(5):
            control.act(OBS)
        assert [t.seq for t in control.timings] == [3, 4, 5]
        assert control.health.ticks == control.health.misses == 5


def test_the_staleness_clock_starts_at_the_first_tick_and_again_after_a_reset(client, monkeypatch):
    server = FlakyServer(monkeypatch)  # down: every tick a miss
    control = client.session(period_s=0.002, max_staleness_s=0.1, fallback="zeros")
    for _ in range(2):
        server.now += 60.0  # idle (homing, between episodes): no tick, no watchdog
        server.run(control, 0.09)
        with pytest.raises(WatchdogError, match=r"no fresh action for 10\d\.\d ms"):
            server.run(control, 0.02)
        control.reset(seed=1)
    control.close()


def test_a_reset_keeps_the_misses_in_a_row_as_only_a_fresh_action_ends_them(client):
    """A reset cleared them (session 26's sdkreview M1): its Reset succeeded while every tick missed, so a loop
    resetting every two ticks never met max_consecutive_misses=3 (tests/core/test_session_guards.py)."""
    with client.session(period_s=0.5, deadline_s=MISS_S, max_consecutive_misses=3) as control:
        control.act(OBS)
        control.act(OBS)  # two misses in a row (the deadline is too short to answer)
        control.reset(seed=1)
        assert control.health.consecutive_misses == 2
        with pytest.raises(WatchdogError, match="3 control ticks in a row"):
            control.act(OBS)


def test_a_period_equal_to_the_served_one_up_to_float_rounding_is_not_warned_about(client, caplog):
    served = client.spec().control_period_s
    assert served == pytest.approx(0.02)
    with caplog.at_level(logging.WARNING, logger="flowrl.client"):
        client.session(period_s=served * (1 + 1e-9)).close()  # e.g. --hz 50 computed another way
    assert caplog.records == []


def test_a_reset_after_a_missed_tick_starts_the_episode_as_a_fresh_session_does(server, client, local, monkeypatch):
    """A tick still queued on the server when Reset arrived took the reseeded generator's first draw:
    after reset(2) the robot got the second and third actions of seed 2, not the first and second."""
    model = server.servicer.model
    original, released = model.run, threading.Event()

    def slow_run(obs: np.ndarray, noise: np.ndarray | None):
        released.wait(timeout=30)  # holds the stream's handler, so the next tick stays queued on the server
        return original(obs, noise)

    real_reset = client.stub.Reset

    def reset_then_release(request, **kwargs):  # without waiting, the queued tick is drawn after the reseed
        reply = real_reset(request, **kwargs)
        released.set()
        return reply

    monkeypatch.setattr(model, "run", slow_run)
    monkeypatch.setattr(client.stub, "Reset", reset_then_release)
    with client.session(period_s=0.5, deadline_s=0.05, seed=2, fallback="zeros", reset_timeout_s=30) as control:
        control.act(OBS)  # held in the model
        control.act(OBS)  # queued behind it
        assert [t.reason for t in control.timings] == ["deadline", "deadline"]
        releaser = threading.Timer(1.0, released.set)  # what the fixed reset waits for
        releaser.start()
        control.reset(seed=2)
        releaser.cancel()
        monkeypatch.setattr(model, "run", original)
        control.deadline_s = 0.5
        got = [control.act(OBS) for _ in range(2)]
        assert [t.source for t in list(control.timings)[-2:]] == ["server", "server"]
    fresh = session_noise(2)
    expected = [local.act(OBS[None], draw_noise(fresh, 1, ACT_DIM))[0].copy() for _ in range(2)]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def _silent_stream(monkeypatch) -> SimpleNamespace:
    """A stream the session sends to and that answers only what the test puts in its ``replies``."""
    stream = SimpleNamespace(requests=SimpleNamespace(put=lambda request: None), replies=queue.SimpleQueue())
    stream.error, stream.close = None, lambda: None
    monkeypatch.setattr(session_stream, "StreamCall", lambda _client: stream)
    return stream


def test_a_reset_whose_missed_tick_gets_no_reply_is_refused_unsent_and_changes_nothing(client, monkeypatch):
    _silent_stream(monkeypatch)
    sent = []
    monkeypatch.setattr(client.stub, "Reset", lambda request, **kwargs: sent.append(request))
    with client.session(period_s=0.02, deadline_s=0.001, seed=3, reset_timeout_s=0.05) as control:
        control.act(OBS)
        why = "DEADLINE_EXCEEDED: no reply to tick 1 within reset_timeout_s 0.05 s: the server may still draw"
        budgets = []
        next_reply = session_stream._next_reply

        def timed_next_reply(stream, until):
            budgets.append(until - time.perf_counter())
            return next_reply(stream, until)

        monkeypatch.setattr(session_stream, "_next_reply", timed_next_reply)
        with pytest.raises(ServiceError, match=f"^{why}"):
            control.reset(seed=9)
        assert budgets and max(budgets) <= 0.05  # the wait is bounded by reset_timeout_s
        assert sent == [] and control.seed == 3


def test_a_reset_whose_stream_ends_before_the_missed_ticks_reply_is_sent_and_the_next_tick_reconnects(
    client, monkeypatch
):
    stream = _silent_stream(monkeypatch)
    with client.session(period_s=0.02, deadline_s=0.001, seed=3, fallback="zeros") as control:
        control.act(OBS)
        stream.replies.put(pb.StreamActReply(seq=0))  # an earlier tick's late reply, dropped
        stream.error = ServiceError(grpc.StatusCode.UNAVAILABLE, "gone")
        stream.replies.put(session_stream._END)
        control.reset(seed=9)
        assert control.seed == 9
        control.act(OBS)
        assert control.timings[-1].reason == "disconnected" and control._stream is None


def test_a_session_whose_client_was_closed_raises_that_on_its_next_call_instead_of_falling_back(server):
    """It fell back ('reconnecting with backoff') on a channel that could never reconnect."""
    client = PolicyClient(server.address)
    control = client.session(period_s=1.0, deadline_s=1.0, max_consecutive_misses=1000)  # a busy host's first tick
    control.act(OBS)
    client.close()
    for call in (lambda: control.act(OBS), lambda: control.act(OBS), lambda: control.reset(seed=1)):
        with pytest.raises(ClientClosedError, match=r"^the PolicyClient of .* is closed \(close\(\) was called\)"):
            call()
    assert [t.source for t in control.timings] == ["server"]
    control.close()


def test_a_reset_closed_while_it_waits_for_the_last_reply_sends_no_reset(client, monkeypatch):
    """reset() waiting for a missed tick's reply while another thread closed the session went on to
    send Reset, answered OK, and left a session on the server until --session-idle-s."""
    stream = _silent_stream(monkeypatch)
    sent = []
    monkeypatch.setattr(client, "reset", lambda *args, **kwargs: sent.append(args))
    with client.session(period_s=0.02, deadline_s=0.001, seed=3, fallback="zeros", reset_timeout_s=5.0) as control:
        control.act(OBS)  # missed: its reply is awaited before a Reset

        def close_and_end() -> None:  # close() ends the stream: the wait sees its end
            control.close()
            stream.replies.put(session_stream._END)

        threading.Timer(0.2, close_and_end).start()
        with pytest.raises(FlowRLError, match="after close"):
            control.reset(seed=9)
    assert sent == []
