"""The timing figures `flowrl control`'s summary prints (round trip, jitter, overruns) are defined in
docs/client.md, as the code computes them: no page defined `jitter` or `overruns`."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from train.control import _tick_figures, _TickClock

CLIENT_MD = Path(__file__).parents[2] / "docs" / "client.md"


def _client_md() -> str:
    return " ".join(CLIENT_MD.read_text(encoding="utf-8").split())  # as wrapped to any width


@pytest.mark.parametrize("term", ["`round trip`", "`jitter`", "`overruns`"])
def test_client_md_defines_each_timing_figure_of_the_summary(term):
    assert f"{term} is" in _client_md() or f"{term} counts" in _client_md()


def test_jitter_is_the_spread_of_the_ticks_lateness_and_an_overrun_a_tick_started_a_period_late():
    text = _client_md()
    assert "`jitter` is the standard deviation of how late each tick started against its fixed-rate schedule" in text
    assert "`overruns` counts the ticks that started more than one period late" in text
    clock = _TickClock(period=0.01)
    start = time.perf_counter() - 1.0  # tick 0 was due a second ago, tick 99 at 0.99 s
    clock.wait_for(start, 0)  # 1 s late: an overrun
    clock.wait_for(start, 99)  # about 10 ms late: at most about one period, on a slow host maybe more
    assert clock.lateness[0] > 0.99 and clock.overruns == 1 + (clock.lateness[1] > 0.01)
    figures = _tick_figures([], [0.002, 0.004])  # a constant lateness would have no jitter
    assert figures["jitter_us"] == pytest.approx(float(np.std([0.002, 0.004])) * 1e6)
