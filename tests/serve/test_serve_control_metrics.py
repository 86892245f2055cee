"""A ControlSession's figures in Prometheus' text format (flowrl_deploy.control_metrics), rendered from
real sessions on a real server: ticks, fallbacks by reason, misses in a row, the age of the latest fresh
action, the round-trip histogram and the session's labels, escaped; valid exposition text throughout."""

from __future__ import annotations

import time

import numpy as np
import pytest
from exposition_text import labelled, parse, value
from tiny_policy import write_policy

from flowrl_deploy.client import PolicyClient
from flowrl_deploy.control_metrics import exposition
from flowrl_deploy.exposition import LATENCY_BUCKETS_S
from flowrl_deploy.serve import PolicyServer, ServeConfig

OBS = np.array([0.3, -0.2, 0.1], np.float32)
MISS_S = 1e-7
"""A deadline no reply can meet: the tick is a miss, so the session acts on its fallback."""


def test_a_session_with_fresh_ticks_and_misses_renders_each_figure(client):
    with client.session(period_s=0.5, seed=0, fallback="zeros") as control:
        for _ in range(5):
            control.act(OBS)
        control.deadline_s = MISS_S
        for _ in range(3):
            control.act(OBS)
        families = parse(exposition(control))
        assert value(families, "flowrl_control_ticks_total") == 8
        assert labelled(families, "flowrl_control_fallback_ticks_total") == {
            (("reason", "deadline"),): 3,
            (("reason", "disconnected"),): 0,  # at 0 from the start, so that rate() sees its first
        }
        assert value(families, "flowrl_control_consecutive_misses") == 3
        assert value(families, "flowrl_control_round_trip_seconds_count") == 5  # fresh ticks only
        round_trips = [t.round_trip_us / 1e6 for t in control.timings if t.source == "server"]
        assert value(families, "flowrl_control_round_trip_seconds_sum") == pytest.approx(sum(round_trips))
        for edge in LATENCY_BUCKETS_S:
            within = sum(r <= edge for r in round_trips)
            assert value(families, "flowrl_control_round_trip_seconds_bucket", le=repr(edge)) == within
        age = value(families, "flowrl_control_fresh_action_age_seconds")
        assert 0 <= age < 10
        stamp = value(families, "flowrl_control_fresh_action_timestamp_seconds")
        assert abs(stamp + age - time.time()) < 10
        assert labelled(families, "flowrl_control_session_info") == {
            (
                ("session_id", control.session_id),
                ("model_version", control.info.model_version),
                ("fallback", "zeros"),
            ): 1
        }
        assert value(families, "flowrl_control_period_seconds") == 0.5
        assert value(families, "flowrl_control_deadline_seconds") == MISS_S
        assert value(families, "flowrl_control_running") == 1
        control.deadline_s = 2.0
        control.act(OBS)
        assert value(parse(exposition(control)), "flowrl_control_consecutive_misses") == 0


def test_the_fresh_action_timestamp_is_when_the_action_came_not_when_the_file_is_written(client):
    """The documented staleness alert, ``time() - flowrl_control_fresh_action_timestamp_seconds > 5``,
    must fire for a loop that still rewrites its file while the server no longer answers."""
    with client.session(period_s=0.5, seed=0, fallback="zeros") as control:
        before = time.time()
        control.act(OBS)
        after = time.time()
        assert control.timings[-1].source == "server"
        time.sleep(0.5)  # the file is written later than the tick
        families = parse(exposition(control))
        assert before - 0.05 <= value(families, "flowrl_control_fresh_action_timestamp_seconds") <= after + 0.05
        assert value(families, "flowrl_control_fresh_action_age_seconds") >= 0.5
        control.health.fresh_at -= 30.0  # as if the latest fresh action came 30 s earlier
        families = parse(exposition(control))
        assert value(families, "flowrl_control_fresh_action_timestamp_seconds") == pytest.approx(before - 30, abs=1)
        assert value(families, "flowrl_control_fresh_action_age_seconds") == pytest.approx(30, abs=1)


def test_a_reset_keeps_the_latest_fresh_actions_time_so_the_staleness_alert_still_has_its_series(client):
    with client.session(period_s=0.5, seed=0, fallback="zeros") as control:
        control.act(OBS)
        fresh_at = control.health.fresh_at
        control.reset(seed=1)
        assert control.health.fresh_at == fresh_at
        families = parse(exposition(control))
        assert "flowrl_control_fresh_action_timestamp_seconds" in families
        assert "flowrl_control_fresh_action_age_seconds" in families


def test_before_its_first_tick_a_session_has_no_fresh_action_to_date(client):
    with client.session(period_s=0.5) as control:
        families = parse(exposition(control, running=False, write_failures=2))
    assert value(families, "flowrl_control_ticks_total") == 0
    assert value(families, "flowrl_control_round_trip_seconds_count") == 0
    assert "flowrl_control_fresh_action_age_seconds" not in families
    assert "flowrl_control_fresh_action_timestamp_seconds" not in families
    assert value(families, "flowrl_control_running") == 0
    assert value(families, "flowrl_control_textfile_write_failures_total") == 2


def test_the_fallbacks_since_the_session_opened_are_counted_past_what_timings_keep(client):
    """``timings`` keeps the latest ``max_timings`` ticks; a counter must not fall when it wraps."""
    with client.session(period_s=0.5, deadline_s=MISS_S, max_timings=2) as control:
        for _ in range(5):
            control.act(OBS)
        families = parse(exposition(control))
    assert len(control.timings) == 2
    assert value(families, "flowrl_control_fallback_ticks_total", reason="deadline") == 5


def test_label_values_are_escaped(client):
    with client.session(period_s=0.5, session_id='robot "7"\\arm\nleft') as control:
        text = exposition(control)
    assert 'session_id="robot \\"7\\"\\\\arm\\nleft"' in text
    (labels,) = labelled(parse(text), "flowrl_control_session_info")
    assert dict(labels)["session_id"] == 'robot "7"\\arm\nleft'


def test_a_servers_refusal_is_counted_by_its_code(policy_path):
    config = ServeConfig(str(policy_path), port=0, grace_s=0, max_sessions=1)
    with PolicyServer(config).start() as server, PolicyClient(server.address) as client:
        first = client.session(period_s=0.5, seed=0)
        second = client.session(period_s=0.5, fallback="zeros")
        first.act(OBS)  # the server's one session
        second.act(OBS)
        second.act(OBS)
        families = parse(exposition(second))
        first.close()
        second.close()
    assert labelled(families, "flowrl_control_fallback_ticks_total") == {
        (("reason", "RESOURCE_EXHAUSTED"),): 2,
        (("reason", "deadline"),): 0,
        (("reason", "disconnected"),): 0,
    }


def test_the_model_version_label_follows_the_fresh_actions_across_a_reload(served):
    _server, client, tmp = served
    with client.session(period_s=0.5) as control:
        before = control.info.model_version
        assert control.health.model_version == before  # before any tick: the served one
        control.act(OBS)
        after, _previous = client.reload(str(write_policy(tmp / "v2.onnx", scale=2.0)))
        control.act(OBS)
        (labels,) = labelled(parse(exposition(control)), "flowrl_control_session_info")
    assert after != before and dict(labels)["model_version"] == after == control.timings[-1].model_version
