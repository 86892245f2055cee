"""ControlSession's max_rate clamp against a real tiny server: its reference, the last action applied,
survives reset() (an episode boundary jumped the actuators by the whole action at once), and
initial_action gives it the robot's current command for the first tick."""

from __future__ import annotations

import re

import numpy as np
import pytest
from tiny_policy import ACT_DIM, write_policy

from flowrl_deploy.client import PolicyClient
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve import PolicyServer, ServeConfig

OBS = np.array([0.3, -0.2, 0.1], np.float32)
"""The policy's actions are about ±[0.05, 1.37] for ±OBS: far more than a step apart."""
PERIOD_S = 0.02  # the tiny policy's own
MAX_RATE = 0.5  # action units per second: at most 0.01 a tick
STEP = MAX_RATE * PERIOD_S
FRESH_S = 10.0
"""A tick deadline any loaded machine meets (the stream-opening tick took up to 0.1 s at load 12, where
PERIOD_S missed 1 in 10): where a test needs the server's own action, the clamp is its subject, not latency."""


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    path = write_policy(tmp_path_factory.mktemp("rate") / "policy.onnx", scale=5.0, deterministic=True)
    with (
        PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as server,
        PolicyClient(server.address) as connected,
    ):
        yield connected


def _within_a_step(action: np.ndarray, reference: np.ndarray) -> bool:
    return bool(np.all(np.abs(action - reference) <= STEP + 1e-6))


def test_a_reset_keeps_the_clamps_reference_so_a_new_episode_ramps(client):
    """The first action after reset() jumped by 1.31 at a 0.01 limit: reset forgot the last action."""
    with client.session(period_s=PERIOD_S, deadline_s=PERIOD_S, seed=0, max_rate=MAX_RATE) as control:
        before = control.act(OBS)
        control.reset(seed=1)
        after = control.act(-OBS)
        assert _within_a_step(after, before), (before, after)


def test_a_reset_still_forgets_the_action_held(client):
    """The hold fallback after a reset is the zeros (nothing applied in this episode yet), ramped."""
    with client.session(period_s=PERIOD_S, seed=0, max_rate=MAX_RATE) as control:
        control.deadline_s = PERIOD_S
        before = control.act(OBS)
        control.reset(seed=1)
        control.deadline_s = 1e-7  # a miss: the fallback acts
        held = control.act(OBS)
        assert control.timings[-1].source == "hold"
        np.testing.assert_allclose(held, before - np.sign(before) * STEP, atol=1e-6)  # a step towards the zeros


def test_initial_action_is_the_first_ticks_reference(client):
    start = np.array([0.9, -1.9], np.float32)
    with client.session(
        period_s=PERIOD_S, deadline_s=PERIOD_S, seed=0, max_rate=MAX_RATE, initial_action=start.tolist()
    ) as control:
        first = control.act(-OBS)
        assert _within_a_step(first, start), first
        np.testing.assert_array_equal(control.initial_action, start)


def test_without_initial_action_the_first_tick_is_not_clamped(client):
    """Documented: with no reference, the first action is the policy's own."""
    with client.session(period_s=PERIOD_S, seed=0) as free:
        free.deadline_s = FRESH_S
        expected = free.act(OBS)
        assert free.timings[-1].source == "server"
    with client.session(period_s=PERIOD_S, seed=0, max_rate=MAX_RATE) as control:
        control.deadline_s = FRESH_S
        first = control.act(OBS)
        assert control.timings[-1].source == "server"
        np.testing.assert_array_equal(first, expected)


BAD_INITIAL_ACTIONS = [
    ({"initial_action": [0.0] * (ACT_DIM + 1)}, f"initial_action must hold {ACT_DIM} finite numbers"),
    ({"initial_action": [0.0, float("nan")]}, f"initial_action must hold {ACT_DIM} finite numbers"),
    ({"initial_action": ["a", "b"]}, f"initial_action must hold {ACT_DIM} finite numbers"),
    ({"initial_action": [0.0, 0.0], "max_rate": None}, "initial_action is used only with max_rate"),
]
"""An initial_action refused, with the settings it comes with, and why: by the constructor and by reset() alike."""


@pytest.mark.parametrize(("settings", "why"), BAD_INITIAL_ACTIONS)
def test_a_bad_initial_action_is_refused_when_the_session_is_made(client, settings, why):
    settings = {"max_rate": MAX_RATE, **settings}
    with pytest.raises(FlowRLError, match=f"^{re.escape(why)}"):
        client.session(period_s=PERIOD_S, **settings)


def test_a_max_delta_written_clamps_from_the_next_tick(client):
    """v0.1.0 read max_delta at each tick (a ROS parameter callback retuned the slew limit live); main
    refused the write."""
    with client.session(period_s=PERIOD_S, seed=0, max_rate=MAX_RATE) as control:
        control.deadline_s = FRESH_S
        before = control.act(OBS)
        control.max_delta = 3 * STEP
        after = control.act(-OBS)
        assert np.all(np.abs(after - before) <= 3 * STEP + 1e-6) and np.any(np.abs(after - before) > STEP + 1e-6)
        control.max_delta = None  # no clamp: the policy's own action
        free = control.act(-OBS)
        assert np.all(np.abs(free - after) > 3 * STEP + 1e-6), (after, free)
    with client.session(period_s=PERIOD_S, seed=0) as unclamped:  # made without max_rate: from the last action
        unclamped.deadline_s = FRESH_S
        before = unclamped.act(OBS)
        unclamped.max_delta = STEP
        assert _within_a_step(unclamped.act(-OBS), before)


def test_reset_with_initial_action_none_leaves_the_new_episodes_first_action_unclamped(client):
    """v0.1.0's reset() forgot the reference: a robot re-homed between episodes gets that back with
    initial_action=None (the first action the policy's own, as a fresh session's with that seed)."""
    with client.session(period_s=PERIOD_S, seed=1) as free:
        free.deadline_s = FRESH_S
        expected = free.act(-OBS)
    with client.session(period_s=PERIOD_S, seed=0, max_rate=MAX_RATE) as control:
        control.deadline_s = FRESH_S
        control.act(OBS)
        control.reset(seed=1, initial_action=None)
        np.testing.assert_array_equal(control.act(-OBS), expected)


def test_reset_with_initial_action_clamps_the_first_action_from_it(client):
    """A robot moved to its home pose between episodes: the clamp's reference is the home command."""
    home = np.array([0.9, -1.9], np.float32)
    with client.session(period_s=PERIOD_S, seed=0, max_rate=MAX_RATE) as control:
        control.deadline_s = FRESH_S
        control.act(OBS)
        control.reset(seed=1, initial_action=home.tolist())
        assert control.last_action is None  # hold still forgets
        first = control.act(-OBS)
        assert _within_a_step(first, home), first


@pytest.mark.parametrize(("settings", "why"), BAD_INITIAL_ACTIONS)
def test_a_bad_initial_action_is_refused_by_reset_which_changes_nothing(client, settings, why):
    settings = dict(settings)  # the cases are shared with the constructor's test
    rate = settings.pop("max_rate", MAX_RATE)
    with client.session(period_s=PERIOD_S, seed=0, max_rate=rate) as control:
        control.deadline_s = FRESH_S
        before = control.act(OBS)
        with pytest.raises(FlowRLError, match=f"^{re.escape(why)}"):
            control.reset(seed=1, **settings)
        assert control.seed == 0
        np.testing.assert_array_equal(control.last_action, before)
