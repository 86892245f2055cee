"""flowrl_deploy.signals: the one rule train and serve follow for their stop signals, and the stop signals
that control and eval take as Ctrl-C."""

import os
import signal
import time

import pytest

from flowrl_deploy.errors import Interrupted
from flowrl_deploy.signals import (
    KEPT_IF_IGNORED,
    STOP_SIGNALS,
    install_stop_handlers,
    interrupt_on_stop_signals,
    stop_name,
)

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")


def handler(signum, frame):
    pass


@pytest.fixture
def ignored():
    """Start the test with ``signal.SIGINT`` and ``signal.SIGTERM`` ignored, and put back what was there."""
    found = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, previous in found.items():
        signal.signal(sig, previous)


def test_sigint_and_sighup_ignored_at_start_stay_ignored_and_sigterm_is_taken(ignored):
    """`flowrl … &` in a script starts with SIGINT ignored (the shell's rule for background jobs), `nohup`
    with SIGHUP ignored: both stay so; a scheduler's ignored SIGTERM is taken even so."""
    hangup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        restore = install_stop_handlers(handler)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is handler
        restore()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, hangup)
    assert set(KEPT_IF_IGNORED) == {signal.SIGINT, signal.SIGHUP}


def test_handlers_found_come_back_once():
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    restore = install_stop_handlers(handler, (signal.SIGINT, signal.SIGUSR1))
    assert signal.getsignal(signal.SIGINT) is handler and signal.getsignal(signal.SIGUSR1) is handler
    restore()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        restore()  # a second call changes nothing
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before[signal.SIGINT])
    assert {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} == before
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


@pytest.fixture
def taken():
    """Start the test with SIGINT and SIGHUP taken (not ignored, as they are under `pytest &` or nohup)."""
    found = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler)}
    found[signal.SIGHUP] = signal.signal(signal.SIGHUP, handler)
    yield
    for sig, previous in found.items():
        signal.signal(sig, previous)


def test_within_interrupt_on_stop_signals_the_first_stop_is_an_interrupt_naming_it(taken):
    """`flowrl control` and `flowrl eval` keep what ran on Ctrl-C: SIGTERM and SIGHUP end them the same
    way (an Interrupted, a KeyboardInterrupt), not at once; a repeat of the stop is ignored while what it
    started finishes (the report written), but a Ctrl-C still interrupts; the handlers found come back."""
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    with interrupt_on_stop_signals() as received:
        with pytest.raises(Interrupted) as stopped:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # never reached: the handler raises as soon as the signal is taken
        assert stopped.value.signum == signal.SIGTERM and isinstance(stopped.value, KeyboardInterrupt)
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's stop delivered twice (to the process, forwarded by srun)
        os.kill(os.getpid(), signal.SIGHUP)
        with pytest.raises(Interrupted) as again:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        assert again.value.signum == signal.SIGINT
    assert received == [signal.SIGTERM, signal.SIGTERM, signal.SIGHUP, signal.SIGINT]
    assert {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} == before
    assert stop_name(signal.SIGINT) == "Ctrl-C" and stop_name(signal.SIGTERM) == "SIGTERM"


def test_interrupt_on_stop_signals_leaves_an_ignored_sighup_ignored():
    hangup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with interrupt_on_stop_signals() as received:
            os.kill(os.getpid(), signal.SIGHUP)  # nohup: the closed terminal does not stop it
            time.sleep(0.01)
        assert received == [] and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, hangup)
