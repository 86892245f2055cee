"""Stop signals sent to the test process itself, made safe: what a command that does not take them
would die of ends the test instead, as an error, not the whole pytest run."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


class KilledBy(BaseException):
    """The process dying of a signal's default action (no ``except Exception`` catches it)."""


@contextlib.contextmanager
def fatal(*signals: int) -> Iterator[None]:
    """Within the block, each of ``signals`` raises :class:`KilledBy`, as its default action would end the
    process; a command run inside that takes them installs its own, and must have put this one back by
    the block's end (checked). The handlers found come back afterwards."""

    def killed(signum: int, frame: object) -> None:
        raise KilledBy(signal.Signals(signum).name)

    found = {sig: signal.signal(sig, killed) for sig in signals}
    try:
        yield
        for sig in signals:
            assert signal.getsignal(sig) is killed, f"{signal.Signals(sig).name}'s handler was not put back"
    finally:
        for sig, handler in found.items():
            signal.signal(sig, handler)
