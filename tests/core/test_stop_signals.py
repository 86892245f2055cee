"""flowrl_deploy.signals: the one rule train and serve follow for their stop signals."""

import signal

import pytest

from flowrl_deploy.signals import KEPT_IF_IGNORED, STOP_SIGNALS, install_stop_handlers

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
