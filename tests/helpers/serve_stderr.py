"""What `flowrl serve` wrote to stderr besides its log line of the load it began."""

from __future__ import annotations

import re

LOADING = re.compile(r"^(<\d>|\S+ )INFO flowrl\.serve: loading .*\n", re.M)
"""The INFO line `flowrl serve` logs as it begins loading the model (``<6>`` first under journald)."""


def refusal(stderr: str) -> str:
    """``stderr`` without the ``loading …`` line: a model refused as it loads follows that line with
    its one-line ``error: …``."""
    return LOADING.sub("", stderr, count=1)
