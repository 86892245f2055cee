"""A ControlSession's attributes after it is made: a setting written (a ROS parameter callback) is checked
as the constructor checks it, or refused when writing it would change nothing; ``last_action`` is the
session's own, never an array a caller can edit."""

from __future__ import annotations

import math
import re
from unittest import mock

import numpy as np
import pytest
from tiny_policy import ACT_DIM

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.session import ControlSession, WatchdogError

OBS = np.array([0.3, -0.2, 0.1], np.float32)
MISS_S = 1e-7
"""A deadline no reply can meet: the tick is a miss, so the session acts on its fallback."""


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (math.nan, "deadline_s must be a finite number > 0, got nan"),
        (0.0, "deadline_s must be a finite number > 0, got 0"),
        (-1.0, "deadline_s must be a finite number > 0, got -1"),
        ("0.01", "deadline_s must be a finite number > 0, got '0.01'"),
        (True, "deadline_s must be a finite number > 0, got True"),
    ],
)
def test_a_bad_deadline_written_is_refused_as_the_constructor_refuses_it(client, value, why):
    """A NaN deadline written by a parameter callback made every later tick raise a raw ValueError."""
    with client.session(period_s=0.5, seed=0) as control:
        with pytest.raises(FlowRLError, match=re.escape(why)):
            control.deadline_s = value
        with pytest.raises(FlowRLError, match=re.escape(why)):
            client.session(period_s=0.5, deadline_s=value)
        assert control.deadline_s == 0.25
        control.act(OBS)
        assert control.timings[-1].source == "server"


def test_a_deadline_written_within_the_period_takes_effect(client):
    with client.session(period_s=0.5, seed=0) as control:
        control.deadline_s = MISS_S
        control.act(OBS)
        assert (control.deadline_s, control.timings[-1].reason) == (MISS_S, "deadline")
        control.deadline_s = 2.0  # longer than the period: a fresh action however loaded the machine
        control.act(OBS)
        assert control.timings[-1].source == "server"
        control.deadline_s = None
        assert control.deadline_s == 0.25  # half the period, as when made


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("max_consecutive_misses", 0, "max_consecutive_misses must be an integer >= 1 or None, got 0"),
        ("max_consecutive_misses", "3", "max_consecutive_misses must be an integer >= 1 or None, got '3'"),
        ("max_consecutive_misses", 2.0, "max_consecutive_misses must be an integer >= 1 or None, got 2"),
        ("max_staleness_s", math.nan, "max_staleness_s must be a finite number > 0, got nan"),
        ("max_staleness_s", -1, "max_staleness_s must be a finite number > 0, got -1"),
        ("reset_timeout_s", math.inf, "reset_timeout_s"),
    ],
)
def test_a_bad_watchdog_limit_written_is_refused_and_the_session_keeps_its_own(client, name, value, why):
    with client.session(period_s=0.5, max_consecutive_misses=3, max_staleness_s=5.0) as control:
        before = getattr(control, name)
        with pytest.raises(FlowRLError, match=re.escape(why)):
            setattr(control, name, value)
        assert getattr(control, name) == before


def test_watchdog_limits_written_take_effect_from_the_next_tick(client):
    with client.session(period_s=0.5, deadline_s=MISS_S) as control:
        control.act(OBS)
        control.max_consecutive_misses = 2
        with pytest.raises(WatchdogError, match="2 control ticks in a row"):
            control.act(OBS)
        control.max_consecutive_misses = None
        control.max_staleness_s = 1e-9
        with pytest.raises(WatchdogError, match="no fresh action for"):
            control.act(OBS)
        control.max_staleness_s = None
        control.act(OBS)
        assert control.health.consecutive_misses == 4
        control.reset_timeout_s = 2
        assert control.reset_timeout_s == 2.0
        control.reset_timeout_s = None  # the default, as when made
        assert control.reset_timeout_s == 1.0


@pytest.mark.parametrize(
    ("name", "value", "cure"),
    [
        ("period_s", 0.01, "open a new session"),
        ("initial_action", [0.0, 0.0], "open a new session"),
        ("pinned", False, "open a new session"),
        ("session_id", "another", "open a new session"),
        ("contract_hash", "0" * 16, "open a new session"),
        ("contract_json", "{}", "open a new session"),
        ("seed", 5, "reset(seed) starts an episode with another"),
    ],
)
def test_a_setting_that_a_write_would_not_change_is_read_only_and_says_what_to_do(client, name, value, cure):
    """A period written was ignored by the rate clamp (its step computed when the session was made); a
    seed written changed what the next reconnection sent, without a reset; a session_id written opened a
    second server session, unseeded and unpinned, on the same stream; a pin written was checked by the
    server only at the next reconnection or reset, and refused there as a contract that had changed."""
    with client.session(period_s=0.5, seed=1, max_rate=2.0, initial_action=[0.0, 0.0]) as control:
        before = getattr(control, name)
        with pytest.raises(AttributeError, match=rf"ControlSession\.{name} .*{re.escape(cure)}"):
            setattr(control, name, value)
        assert np.array_equal(getattr(control, name), before)
    assert (control.period_s, control.max_delta, control.seed, control.pinned) == (0.5, 1.0, 1, False)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (math.nan, "max_delta must be a finite number > 0, got nan"),
        (math.inf, "max_delta must be a finite number > 0, got inf"),
        (0.0, "max_delta must be a finite number > 0, got 0"),
        (-1.0, "max_delta must be a finite number > 0, got -1"),
        ("0.01", "max_delta must be a finite number > 0, got '0.01'"),
        (True, "max_delta must be a finite number > 0, got True"),
    ],
)
def test_a_bad_max_delta_written_is_refused_and_the_session_keeps_its_own(client, value, why):
    """v0.1.0 read max_delta at every tick, so a parameter callback retuned the slew limit live; a NaN
    written would have turned the clamp off (every comparison false)."""
    with client.session(period_s=0.5, max_rate=2.0) as control:
        with pytest.raises(FlowRLError, match=re.escape(why)):
            control.max_delta = value
        assert control.max_delta == 1.0


def test_max_delta_is_writable_and_none_turns_the_clamp_off(client):
    with client.session(period_s=0.5) as control:
        assert control.max_delta is None
        control.max_delta = 0.25
        assert control.max_delta == 0.25
        control.max_delta = 1
        assert control.max_delta == 1.0 and isinstance(control.max_delta, float)
        control.max_delta = None
        assert control.max_delta is None
        with pytest.raises(AttributeError, match=r"ControlSession\.max_delta .*None"):
            del control.max_delta


def test_writing_last_action_says_to_pass_initial_action(client):
    """v0.1.0's way to seed the clamp's first reference was `session.last_action = command`; it failed
    with Python's "property 'last_action' of 'ControlSession' object has no setter", naming no cure."""
    with client.session(period_s=0.5, max_rate=2.0) as control:
        for write in (
            lambda: setattr(control, "last_action", np.zeros(ACT_DIM)),
            lambda: delattr(control, "last_action"),
        ):
            with pytest.raises(AttributeError) as refused:
                write()
            assert "has no setter" not in str(refused.value)
            assert str(refused.value).startswith("ControlSession.last_action is the last action returned (read-only)")
            assert "initial_action=" in str(refused.value) and "reset(" in str(refused.value)
        assert control.last_action is None


@pytest.mark.parametrize("name", ["max_rate", "backoff_s", "max_timings", "local_model", "contract"])
def test_a_setting_given_only_to_the_constructor_is_refused_naming_those_written_after(client, name):
    """``setattr(control, "max_rate", 3.0)`` from a parameter callback was taken silently and read by
    nothing: the rate clamp kept its step."""
    with client.session(period_s=0.5) as control:
        with pytest.raises(AttributeError, match=rf"^ControlSession has no setting '{name}' to write: it is fixed"):
            setattr(control, name, 1.0)
        assert name not in vars(control)


def test_writing_max_rate_names_max_delta(client):
    with (
        client.session(period_s=0.5) as control,
        pytest.raises(AttributeError, match=r"max_delta = max_rate \* period_s"),
    ):
        control.max_rate = 2.0


def test_a_subclass_or_a_mock_sets_names_of_its_own(client):
    class RobotSession(ControlSession):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            self.joint_names = ["hip", "knee"]

    with RobotSession(client, period_s=0.5) as control:
        assert control.joint_names == ["hip", "knee"]
        with mock.patch.object(control, "robot_state", "idle", create=True):
            assert control.robot_state == "idle"


@pytest.mark.parametrize("name", ["period_s", "session_id", "contract_hash"])
def test_deleting_a_fixed_setting_says_it_is_fixed(client, name):
    with (
        client.session(period_s=0.5) as control,
        pytest.raises(AttributeError, match=rf"ControlSession\.{name} is fixed when the session is made"),
    ):
        delattr(control, name)


def test_the_initial_action_is_the_sessions_own(client):
    """As ``last_action``: editing the array read back changed the first tick's rate-clamp reference."""
    with client.session(period_s=0.5, max_rate=2.0, initial_action=[0.0, 0.0]) as control:
        with pytest.raises(ValueError, match="read-only"):
            control.initial_action[:] = 5.0
        np.testing.assert_array_equal(control.initial_action, np.zeros(ACT_DIM))


@pytest.mark.parametrize("fallback", ["zeros", "hold"])
def test_last_action_after_a_fallback_is_not_an_array_a_caller_can_edit(client, fallback):
    """After a zeros tick, `last_action += 0.7` edited the fallback's own zeros: every later zeros
    fallback sent 0.7."""
    with client.session(period_s=0.5, deadline_s=MISS_S, fallback=fallback) as control:
        for _ in range(2):
            np.testing.assert_array_equal(control.act(OBS), np.zeros(ACT_DIM))
            assert control.timings[-1].source == fallback
            with pytest.raises(ValueError, match="read-only"):
                control.last_action += 0.7
            with pytest.raises(ValueError, match="read-only"):
                control.last_action[0] = 5.0
            with pytest.raises(AttributeError, match="last_action"):
                control.last_action = np.zeros(5, np.float32)
            np.testing.assert_array_equal(control.last_action, np.zeros(ACT_DIM))


def test_last_action_after_a_fresh_tick_is_read_only_as_well(client):
    with client.session(period_s=0.5, seed=0) as control:
        action = control.act(OBS)
        np.testing.assert_array_equal(control.last_action, action)
        with pytest.raises(ValueError, match="read-only"):
            control.last_action *= 0.5
        control.reset(seed=0)
        assert control.last_action is None
