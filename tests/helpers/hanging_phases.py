"""Tests that hold the GIL in C for good, run only by test_hang_watchdog.py in its own pytest (the
name keeps them out of the suite): one in its call, one failing whose teardown hangs."""

from __future__ import annotations

import ctypes

import pytest


def _hold_the_gil() -> None:
    """Lock a locked mutex in C without releasing the GIL, as a stuck C library does: no signal ends it
    (a sleep would return early at pytest-timeout's SIGALRM)."""
    libc = ctypes.PyDLL(None)
    mutex = ctypes.create_string_buffer(64)  # zeroed: glibc's PTHREAD_MUTEX_INITIALIZER, a default mutex
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)  # a default mutex locked twice by its thread waits for good


def test_hangs_in_its_call():
    _hold_the_gil()


@pytest.fixture
def hangs_at_teardown():
    yield
    _hold_the_gil()


def test_fails_then_hangs_at_teardown(hangs_at_teardown):
    raise AssertionError("this test fails")
