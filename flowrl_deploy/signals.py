"""The stop signals of `flowrl train` and `flowrl serve`, and the one rule both follow for a signal ignored at start.

Standard library only: the serve stage imports it, and it never imports torch.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType


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
