"""ControlSession: fresh actions, stale replies dropped, fallbacks, watchdog, clamps, reconnect."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from tiny_policy import ACT_DIM, tiny_contract, write_policy

from flowrl_deploy.client import PolicyClient, ServiceError, WatchdogError
from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.serve.noise import draw_noise, session_noise

OBS = np.array([0.3, -0.2, 0.1], np.float32)


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
            control.act(OBS)
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
