"""Wall-clock timing of a policy call, shared by the steps sweep and bench/infer_latency.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

BLOCK_S = 0.05
"""Seconds each call of :func:`time_interleaved` runs back to back before the next one's turn."""


@dataclass(frozen=True)
class Timing:
    """Per-call latency over ``calls`` timed calls."""

    p50_ms: float
    p99_ms: float
    calls: int

    def throughput(self, batch: int) -> float:
        """Samples per second at the median latency."""
        return batch / (self.p50_ms / 1e3)


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
    return _summary(durations)


def time_interleaved(
    calls: dict[str, Callable[[], object]], *, budget_s: float = 1.0, min_calls: int = 20
) -> dict[str, Timing]:
    """Time several calls in alternating blocks of about :data:`BLOCK_S` seconds each.

    Load from other processes on a shared machine then falls on all of them alike, so their
    ratios stay meaningful; within a block the call runs back to back, as in a control loop,
    and the block's first call (cold caches after the other calls) is not counted.
    """
    durations: dict[str, list[float]] = {name: [] for name in calls}
    deadline = time.perf_counter() + budget_s
    while min(len(d) for d in durations.values()) < min_calls or time.perf_counter() < deadline:
        for name, call in calls.items():
            call()
            block_end = time.perf_counter() + BLOCK_S
            while True:
                start = time.perf_counter()
                call()
                durations[name].append(time.perf_counter() - start)
                if start >= block_end:
                    break
    return {name: _summary(d) for name, d in durations.items()}


def _summary(durations: list[float]) -> Timing:
    ms = np.asarray(durations) * 1e3
    return Timing(float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), len(durations))
