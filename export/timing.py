"""Wall-clock timing of a policy call, for the steps sweep (and bench/timing.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Timing:
    """Per-call latency over ``calls`` timed calls."""

    p50_ms: float
    p99_ms: float
    calls: int


def time_calls(call: Callable[[], object], *, budget_s: float = 1.0, min_calls: int = 20, warmup: int = 5) -> Timing:
    """Time ``call`` repeatedly for about ``budget_s`` seconds (at least ``min_calls`` calls)."""
    for _ in range(warmup):
        call()
    durations = []
    deadline = time.perf_counter() + budget_s
    while len(durations) < min_calls or time.perf_counter() < deadline:
        start = time.perf_counter()
        call()
        durations.append(time.perf_counter() - start)
    return timing_of(durations)


def timing_of(durations: list[float]) -> Timing:
    """The :class:`Timing` of calls that took ``durations`` seconds."""
    ms = np.asarray(durations) * 1e3
    return Timing(float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), len(durations))
