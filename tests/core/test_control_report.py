"""The control report's figures from synthetic tick timings: percentiles, jitter, what counts as fresh,
the fallbacks by reason."""

from __future__ import annotations

import json

import pytest

from flowrl_deploy.session import CallTiming
from flowrl_deploy.train.control import ControlReport, _tick_figures


def fresh(seq: int, round_trip_us: float, version: str = "v1-a") -> CallTiming:
    return CallTiming(
        seq,
        "server",
        round_trip_us,
        server_us=round_trip_us / 10,
        inference_us=round_trip_us / 20,
        clock_offset_us=-seq,
        model_version=version,
    )


def _report(timings: list[CallTiming]) -> ControlReport:
    misses = sum(t.source != "server" for t in timings)
    return ControlReport(
        server="localhost:1",
        env_id="dmc:cartpole-balance",
        hz=50.0,
        contract_hz=50.0,
        seed=0,
        deadline_ms=10.0,
        returns=[1.0],
        deadline_misses=misses,
        overruns=0,
        **_tick_figures(timings, [0.0]),
    )


def test_round_trip_percentiles_cover_fresh_replies_only():
    # 1001 fresh round trips of 1..1001 µs: the q-th percentile is exactly 1 + 10·q µs.
    timings = [fresh(seq, float(seq), "v2-b" if seq > 500 else "v1-a") for seq in range(1, 1002)]
    timings += [
        CallTiming(1002 + i, source, 1e9, reason="deadline") for i, source in enumerate(("hold", "zeros", "local"))
    ]
    figures = _tick_figures(timings, [0.0])
    assert figures["steps"] == 1004
    assert figures["fresh_replies"] == 1001
    assert figures["round_trip_p50_us"] == pytest.approx(501.0)
    assert figures["round_trip_p99_us"] == pytest.approx(991.0)
    assert figures["round_trip_p999_us"] == pytest.approx(1000.0)
    assert figures["round_trip_us"] == [float(seq) for seq in range(1, 1002)]
    assert figures["server_p50_us"] == pytest.approx(50.1)
    assert figures["inference_p50_us"] == pytest.approx(25.05)
    assert figures["clock_offset_us"] == pytest.approx(-501.0)
    assert figures["model_versions"] == ["v1-a", "v2-b"]
    assert figures["fallbacks"] == {"deadline": 3}


def test_jitter_is_the_standard_deviation_of_the_tick_lateness():
    # Ticks 1 ms and 3 ms late: mean 2 ms, standard deviation 1 ms.
    figures = _tick_figures([fresh(1, 100.0)], [1e-3, 3e-3, 1e-3, 3e-3])
    assert figures["jitter_us"] == pytest.approx(1000.0)
    # Constant lateness is late but has no jitter.
    assert _tick_figures([fresh(1, 100.0)], [5e-3] * 4)["jitter_us"] == pytest.approx(0.0, abs=1e-9)


def test_without_fresh_replies_the_latency_figures_are_none_not_zero():
    figures = _tick_figures([CallTiming(1, "hold", 50.0, reason="disconnected")] * 2, [])
    assert figures["steps"] == 2 and figures["fresh_replies"] == 0
    for name in ("round_trip_p50_us", "round_trip_p99_us", "round_trip_p999_us", "server_p50_us", "clock_offset_us"):
        assert figures[name] is None
    assert figures["jitter_us"] == 0.0
    assert figures["model_versions"] == [] and figures["round_trip_us"] == []
    report = ControlReport(
        server="localhost:1",
        env_id="dmc:cartpole-balance",
        hz=50.0,
        contract_hz=None,
        seed=0,
        deadline_ms=10.0,
        returns=[],
        deadline_misses=2,
        overruns=0,
        **figures,
    )
    assert report.miss_rate == 1.0
    assert "no fresh replies, so no latency figures" in report.summary()


@pytest.mark.parametrize(("misses", "warned"), [(0, False), (10, False), (11, True), (1000, True)])
def test_a_run_mostly_on_the_fallback_says_so(misses, warned):
    """A control run against a stopped server went on holding its last action and exited 0 with
    '88.467%' misses buried in the figures; above 1 % the summary now warns."""
    timings = [fresh(seq, 500.0) for seq in range(1000 - misses)] + [
        CallTiming(0, "hold", 1e4, reason="deadline")
    ] * misses
    report = _report(timings)
    assert ("warning: " in report.summary()) is warned
    if warned:
        assert f"{100 * misses / 1000:.1f}% of the ticks acted on the fallback" in report.summary()


def test_the_report_counts_the_fallbacks_by_reason_the_most_frequent_first():
    """A second robot on a server at its session limit got 100 % zeros, and the report said only
    'deadline misses': now it says the server refused them."""
    reasons = ["deadline"] * 3 + ["RESOURCE_EXHAUSTED"] * 97 + ["disconnected"]
    timings = [fresh(0, 500.0)] + [CallTiming(i, "zeros", 1e4, reason=r) for i, r in enumerate(reasons)]
    report = _report(timings)
    assert report.fallbacks == {"RESOURCE_EXHAUSTED": 97, "deadline": 3, "disconnected": 1}
    assert list(json.loads(json.dumps(report.to_dict()))["fallbacks"].items()) == list(report.fallbacks.items())
    assert "(99.020%: RESOURCE_EXHAUSTED 97, deadline 3, disconnected 1), overruns 0\nwarning: " in report.summary()


def test_a_run_without_fallbacks_lists_none():
    report = _report([fresh(seq, 500.0) for seq in range(5)])
    assert report.fallbacks == {} and report.to_dict()["fallbacks"] == {}
    assert "ticks without a fresh action 0 (0.000%), overruns" in report.summary()


def test_the_summary_gives_the_episodes_lengths_and_terminations():
    """A fall (HumanoidBench) showed only as a low return in `flowrl control`'s text, unlike `flowrl eval`."""
    report = _report([fresh(i, 100.0) for i in range(3)])
    assert "episode length" not in report.summary()  # no episode completed with a length
    report.returns[:] = [1.0, 2.0]
    report.lengths[:] = [20, 30]
    report.terminated[:] = [True, False]
    first = report.summary().splitlines()[0]
    assert first.endswith("(3 steps; episode length 25 ± 5 steps, 1 of 2 ended by termination)")


def test_the_summary_and_the_json_report_name_episodes_an_unstable_simulation_cut_short():
    report = _report([fresh(i, 100.0) for i in range(3)])
    report.returns[:], report.lengths[:], report.terminated[:] = [1.0, 2.0], [20, 30], [False, False]
    report.unstable[:] = ["dmc:dog-run: the simulation became unstable (mjWARN_BADQACC)", ""]
    lines = report.summary().splitlines()
    assert lines[0].endswith("0 of 2 ended by termination, 1 of 2 cut short by an unstable simulation)")
    assert lines[-1] == (
        "warning: 1 of 2 episodes was cut short by an unstable simulation: dmc:dog-run: the simulation became "
        "unstable (mjWARN_BADQACC)"
    )
    assert json.loads(json.dumps(report.to_dict()))["unstable"] == report.unstable
    report.unstable[:] = ["", ""]
    assert "unstable" not in report.summary()


@pytest.mark.parametrize(
    ("fallback", "reasons", "said"),
    [
        ("hold", [], None),
        ("hold", ["deadline"], "note: 1 tick acted on the hold fallback, so the return is not the seeded episode's"),
        ("zeros", ["deadline", "disconnected"], "note: 2 ticks acted on the zeros fallback, so the return is not"),
        ("local", ["deadline", "DEADLINE_EXCEEDED"], "note: 2 ticks acted on the local fallback: the return is the"),
        ("local", ["deadline", "disconnected"], "note: 2 ticks acted on the local fallback, so the return is not"),
    ],
)
def test_any_fallback_tick_is_said_to_leave_the_seeded_episode(fallback, reasons, said):
    """`flowrl control --seed S` matched `flowrl eval --seed S` only with no fallback tick, and a run
    with 0.4 % of its ticks missed (under the 1 % warning) printed a different return with no word."""
    timings = [fresh(seq, 500.0) for seq in range(1000 - len(reasons))]
    timings += [CallTiming(0, fallback, 1e4, reason=reason) for reason in reasons]
    report = _report(timings)
    report.fallback = fallback
    assert "note: " not in report.summary()  # `flowrl control` prints the note on stderr, the summary on stdout
    note = report.seeded_note()
    if said is None:
        assert note == ""
    else:
        assert note.startswith(said) and "`flowrl eval --seed 0`" in note and "\n" not in note
        assert "warning: " not in report.summary()  # under 1 %: the note, not the warning


def test_the_summary_names_fallback_ticks_not_deadline_misses_when_the_server_was_away():
    """A run against a killed server said 'deadline misses 228' for ticks that never reached it
    (robot review F4): the count is of every tick without a fresh action, so it is named so."""
    timings = [fresh(0, 500.0)] + [CallTiming(i, "hold", 1e4, reason="disconnected") for i in range(228)]
    timings.append(CallTiming(229, "hold", 1e4, reason="deadline"))
    summary = _report(timings).summary()
    assert "deadline misses" not in summary
    assert "ticks without a fresh action 229 (99.565%: disconnected 228, deadline 1), overruns 0" in summary
    clean = _report([fresh(seq, 500.0) for seq in range(5)]).summary()
    assert "ticks without a fresh action 0 (0.000%), overruns 0" in clean
