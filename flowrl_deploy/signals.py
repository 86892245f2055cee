"""The stop signals of `flowrl train` and `flowrl serve`, and the one rule both follow for a signal ignored at start;
and :func:`interrupt_on_stop_signals`, which makes them Ctrl-C for the commands that keep what ran on Ctrl-C.

Standard library only (and :mod:`flowrl_deploy.errors`): the serve stage imports it, and it never imports torch.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

from flowrl_deploy.errors import Interrupted


def _present(*names: str) -> tuple[int, ...]:
    """The signals of ``names`` this system has (Windows has no SIGHUP, SIGUSR1 or SIGUSR2; only it has SIGBREAK)."""
    return tuple(getattr(signal, name) for name in names if hasattr(signal, name))


STOP_SIGNALS = _present("SIGTERM", "SIGINT", "SIGHUP", "SIGBREAK")
"""Signals that stop training and serving gracefully: SIGTERM (a service manager's or scheduler's stop),
SIGINT (Ctrl-C), SIGHUP (a closed terminal or SSH session, or ``kill -HUP``) and SIGBREAK (Windows'
Ctrl-Break, what :class:`~flowrl_deploy.serve.process.ServerProcess` sends its child there)."""

SCHEDULER_NOTICES = _present("SIGUSR1", "SIGUSR2")
"""A job scheduler's notice before its time limit (SLURM's ``--signal=USR1@300``, LSF, submitit): training
stops on them too, to save before the scheduler's SIGKILL."""

KEPT_IF_IGNORED = _present("SIGINT", "SIGHUP")
"""Of the stop signals, those that stay ignored when ignored at start, as Python itself leaves SIGINT:
``nohup flowrl …`` outlives its terminal, and ``flowrl … &`` in a script (whose shell ignores SIGINT for
background jobs) outlives a Ctrl-C meant for the script's foreground job. Any other signal ignored at start
(a scheduler's SIGTERM or SIGUSR1) is taken even so, or the process would run on until its SIGKILL."""

Handler = Callable[[int, FrameType | None], object]


def install_stop_handlers(handler: Handler, signals: tuple[int, ...] = STOP_SIGNALS) -> Callable[[], None]:
    """Make ``handler`` the handler of each of ``signals``, except one of :data:`KEPT_IF_IGNORED` that is
    ignored now, and return ``restore()``, which puts back the handlers found (once; a second call does
    nothing). Main thread only: elsewhere ``signal.signal`` raises ValueError, and nothing is left installed."""
    previous: dict[int, object] = {}

    def restore() -> None:
        while previous:
            sig, found = previous.popitem()
            signal.signal(sig, found)

    try:
        for sig in signals:
            if sig not in KEPT_IF_IGNORED or signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, handler)
    except BaseException:
        restore()
        raise
    return restore


@contextlib.contextmanager
def held_stop_signals(received: list[int], signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Within the block, a stop signal (any of ``signals``, Ctrl-C too) is only noted in ``received``: what the
    block does once the work is over (a report being written, milliseconds) finishes, and the caller acts on
    the stop after it. The handlers found come back at the block's end (those of an enclosing
    :func:`interrupt_on_stop_signals`)."""
    main = threading.current_thread() is threading.main_thread()
    restore = install_stop_handlers(lambda signum, _: received.append(signum), signals) if main else (lambda: None)
    try:
        yield
    finally:
        restore()


def stop_signal_of(exc: KeyboardInterrupt) -> int:
    """The signal behind a stop: an :class:`~flowrl_deploy.errors.Interrupted`'s own, else SIGINT (a Ctrl-C)."""
    return exc.signum if isinstance(exc, Interrupted) else signal.SIGINT


def stop_name(signum: int) -> str:
    """How a message names a stop signal: 'Ctrl-C' for SIGINT, else its name ('SIGTERM')."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


@contextlib.contextmanager
def interrupt_on_stop_signals(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[list[int]]:
    """Within the block, the first of ``signals`` (as :func:`install_stop_handlers` takes them: an ignored
    SIGINT or SIGHUP stays ignored) raises :class:`~flowrl_deploy.errors.Interrupted`, a KeyboardInterrupt
    naming it, where Ctrl-C raises KeyboardInterrupt: a command that keeps what ran on Ctrl-C (``flowrl
    control``'s report, ``flowrl eval``'s episodes) keeps it on SIGTERM (``timeout``, a CI cancel, a
    scheduler's stop) and SIGHUP too, and exits 128 + signal. The block gets the list of the signals
    received, in order. A repeat of any signal but SIGINT is ignored, so that what the first one started
    (a report being written) finishes: a scheduler may deliver its stop twice (to the process, and forwarded
    by ``srun``), and escalates with SIGKILL, never with another one; a second Ctrl-C interrupts again, as
    it does without the block. The handlers found come back at the block's end. Off the main thread, where
    no handler can be installed, the block runs with none."""
    received: list[int] = []

    def interrupt(signum: int, _: FrameType | None) -> None:
        first = not received
        received.append(signum)
        if first or signum == signal.SIGINT:
            raise Interrupted(signum)

    main = threading.current_thread() is threading.main_thread()
    restore = install_stop_handlers(interrupt, signals) if main else (lambda: None)
    try:
        yield received
    finally:
        restore()
