"""Fixtures shared across the test folders, and the skipping of tests whose optional extras are missing."""

from __future__ import annotations

import faulthandler
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from extras_needed import missing_extras_reason, needs_extras

TESTS = Path(__file__).parent

EXTRAS_NEEDED = {
    "train": ("train", "export"),  # the training stage, checked against its export in places
    "export": ("train", "export"),  # the export stage, on actors from flowrl_deploy.train
    "cli/test_train_cli.py": ("train",),
    "cli/test_train_resume_hint.py": ("train",),
    "serve/test_serve_model_file.py::test_serving_a_checkpoint_holding_a_pipe_is_refused_not_read": ("export",),
}
"""Tests (a folder, a module or module::test, under tests/) that need optional extras; a folder's or a
module's tests import them at the top."""


def _needed(path: Path, test: str = "") -> tuple[str, tuple[str, ...]]:
    """The entry of EXTRAS_NEEDED that holds a module (``test`` empty) or a test in it, and its extras;
    no extras when none does."""
    if path.is_relative_to(TESTS):
        node = path.relative_to(TESTS).as_posix() + (f"::{test}" if test else "")
        for entry, extras in EXTRAS_NEEDED.items():
            if f"{node}/".startswith(f"{entry}/"):
                return entry, extras
    return "", ()


def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport | None:
    """A module of EXTRAS_NEEDED whose extras are missing is not imported but reported skipped, under
    the entry that names it (a folder's modules fold into one line of ``-rs``) and the install to run."""
    if not isinstance(collector, pytest.Module):
        return None
    entry, extras = _needed(collector.path)
    if (reason := missing_extras_reason(*extras)) is None:
        return None
    return pytest.CollectReport(collector.nodeid, "skipped", (str(TESTS / entry), None, reason), [])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if extras := _needed(item.path, getattr(item, "originalname", item.name))[1]:
            item.add_marker(needs_extras(*extras))


@pytest.fixture
def one_torch_thread():
    """Tiny networks use one torch thread: on a busy 2-core machine extra intra-op threads only wait
    on each other (an update of a width-16 net went from 4 ms to 500 ms)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


HANG_MARGIN_S = 60
"""A test phase (setup, call or teardown) still running this long after pytest-timeout's limit (600 s in
pyproject.toml, or a test's own) ends the run with every thread's stack, from faulthandler's own thread,
which needs no GIL: pytest-timeout's timer cannot fire while a thread holds the GIL in C, as one CI run
did for good in gRPC's channel clean-up called from a garbage collection."""
HANG_REPORT_FD = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    # the terminal's stderr, as pytest found it: a test's own stderr is captured into a file, lost at the exit
    config.stash[HANG_REPORT_FD] = os.dup(2)
    # A shell without job control starts `pytest ... &` with Ctrl-C ignored, which the servers, `flowrl control`
    # and their child processes keep ignored (as `nohup` asks): a test that sends Ctrl-C waited for good
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_unconfigure(config: pytest.Config) -> None:
    os.close(config.stash[HANG_REPORT_FD])


def _hang_limit_s(item: pytest.Item) -> float | None:
    """pytest-timeout's limit for ``item`` (its ``timeout`` mark, ``--timeout`` or the ini's) plus the margin;
    None where it sets none (0, or pytest-timeout missing)."""
    marker = item.get_closest_marker("timeout")
    value = marker.args[0] if marker is not None and marker.args else item.config.getoption("timeout", None)
    if value is None:
        try:
            value = item.config.getini("timeout")
        except ValueError:  # pytest-timeout is not installed
            return None
    seconds = float(value or 0)
    margin = float(os.environ.get("FLOWRL_TEST_HANG_MARGIN_S", HANG_MARGIN_S))  # test_hang_watchdog's, shorter
    return seconds + margin if seconds > 0 else None


def _watched(item: pytest.Item) -> Iterator[None]:
    """Arm the hang watchdog around one phase of ``item``. Per phase, because pytest cancels faulthandler's
    timer whenever a phase fails (its faulthandler plugin's pytest_exception_interact): the teardown after
    a failure, which closes servers and channels, is then watched afresh."""
    limit = _hang_limit_s(item)
    if limit is not None:
        faulthandler.dump_traceback_later(limit, exit=True, file=item.config.stash[HANG_REPORT_FD])
    try:
        yield
    finally:
        if limit is not None:
            faulthandler.cancel_dump_traceback_later()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    yield from _watched(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    yield from _watched(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    yield from _watched(item)


@pytest.fixture(scope="session", autouse=True)
def grpc_kept_initialized() -> Iterator[None]:
    """One idle gRPC channel open for the whole run (it never connects), so gRPC stays initialized and
    its event engine alive between tests: a channel dropped by a test and closed later by the garbage
    collector then never tears them down. That tear-down waits with the GIL held for the engine's threads
    to end, one of which may wait for the GIL (grpc/grpc#42247); a CI run hung for good in a channel's
    clean-up called from a garbage collection (the cause there not proven to be this one)."""
    import grpc

    with grpc.insecure_channel("127.0.0.1:9"):
        yield
