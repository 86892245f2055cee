"""tests/conftest.py's hang watchdog: a test phase holding the GIL past pytest-timeout's limit (which
cannot fire then) ends the run with the stuck thread's stack, in the call and in the teardown after a
failure (pytest cancels faulthandler's timer when a phase fails, so each phase arms its own)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("test", "stuck_in"),
    [("test_hangs_in_its_call", "test_hangs_in_its_call"), ("test_fails_then_hangs_at_teardown", "hangs_at_teardown")],
)
def test_a_phase_holding_the_gil_ends_the_run_with_its_stack(test, stuck_in):
    env = {**os.environ, "FLOWRL_TEST_HANG_MARGIN_S": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "1"]
    start = time.monotonic()
    result = subprocess.run(
        [*command, f"{TESTS / 'helpers' / 'hanging_phases.py'}::{test}"],
        cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    took = time.monotonic() - start
    assert result.returncode == 1, result.stdout + result.stderr
    assert took < 30, f"the watchdog took {took:.0f} s to end the run (its limit: 2 s)"
    assert "Timeout (0:00:02)!" in result.stderr and f"in {stuck_in}" in result.stderr, result.stderr
