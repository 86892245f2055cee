"""Prometheus text exposition format (0.0.4), written by hand so that the base install needs no
client library: label escaping, a cumulative histogram and the latency bucket edges. The server's
``/metrics`` (``serve/metrics.py``) and the robot's control-loop textfile
(:mod:`flowrl_deploy.control_metrics`) both render with these."""

from __future__ import annotations

import bisect

LATENCY_BUCKETS_S = (
    *(5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 7.5e-4),
    *(1e-3, 1.5e-3, 2e-3, 2.5e-3, 3e-3, 4e-3, 5e-3),
    *(1e-2, 2.5e-2, 5e-2, 0.1, 0.5),
)
"""The ``le`` edges (seconds) of the latency histograms, the server's ``flowrl_request_latency_seconds``
and ``flowrl_inference_seconds`` and the robot's ``flowrl_control_round_trip_seconds`` alike: fine below
a millisecond, and every half millisecond or so up to 5 ms, around a 200 Hz loop's 2.5 ms budget (with
2 ms then 5 ms, ``histogram_quantile`` put a true p99 of 2.2 ms at 3 ms)."""


def escape_label_value(value: str) -> str:
    """A label value as the text format writes it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_labels(labels: dict[str, str]) -> str:
    """``name="value",…`` (values escaped), without the braces."""
    return ",".join(f'{name}="{escape_label_value(value)}"' for name, value in labels.items())


class Histogram:
    """Cumulative-bucket histogram, as Prometheus defines it."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def copy(self) -> Histogram:
        """A copy to render while another thread may go on observing, without a lock: its buckets are
        copied at once (one C-level list copy under the GIL) and its count is theirs, so the ``+Inf``
        bucket always equals ``_count``; ``_sum`` may lack the one observation being made meanwhile."""
        copied = Histogram(self.buckets)
        copied.counts = list(self.counts)
        copied.total = self.total
        copied.count = sum(copied.counts)
        return copied

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out, running = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {running}')
        label_set = f"{{{labels}}}" if labels else ""  # no empty braces on an unlabelled series
        out.append(f"{name}_sum{label_set} {self.total}")
        out.append(f"{name}_count{label_set} {self.count}")
        return out
