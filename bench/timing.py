"""Timing several calls in turn, for the benchmarks (bench/infer_latency.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

from flowrl_deploy.export.timing import Timing, timing_of

BLOCK_S = 0.05
"""Seconds each call of :func:`time_interleaved` runs back to back before the next one's turn."""


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
    return {name: timing_of(d) for name, d in durations.items()}


def throughput(timing: Timing, batch: int) -> float:
    """Samples per second at the median latency of calls on ``batch`` samples."""
    return batch / (timing.p50_ms / 1e3)
