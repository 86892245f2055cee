"""The ``flowrl`` program's entry point (pyproject.toml's ``[project.scripts]``): it imports the command
line inside a ``try``, so that a Ctrl-C in the second or so that the import takes (typer, numpy and the
command modules) is one line and exit status 130, not a Python traceback.

Standard library only, like :mod:`flowrl_deploy` itself: a Ctrl-C may have cut any other import short.
"""

from __future__ import annotations

import os
import sys

BEFORE_THE_COMMAND = "interrupted (Ctrl-C) before the command began: nothing was done"
"""What a Ctrl-C before any command's work began prints (here, and for one while click parses the command line)."""


def interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C (``KeyboardInterrupt``, or an :class:`~flowrl_deploy.errors.Interrupted` stop signal)
    that ``exc`` is, or that it was raised from (``__cause__``), and for an ImportError also the one it was
    raised while handling (``__context__``, unless ``raise … from None`` hid it); None when there is none.
    An extension module's import turns a Ctrl-C into an error of its own: mujoco's ``ImportError:
    initialization failed``, raised from the KeyboardInterrupt. Any other error raised while a Ctrl-C was
    handled (a failed clean-up, a bug) is that error: it must not be hidden as the interrupt."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        during = isinstance(current, ImportError) and not current.__suppress_context__
        current = current.__cause__ or (current.__context__ if during else None)
    return None


def reserve_standard_streams() -> None:
    """Open the null device on each of file descriptors 0, 1 and 2 that the caller left closed
    (``flowrl query ... >&-``, a daemon started without them), and give Python a stream on it.

    Otherwise the next file opened takes the lowest free number: a checkpoint or report opened as
    descriptor 2 would get the C libraries' warnings written into it. Standard output is opened
    read-only, so that printing to it fails with 'Bad file descriptor' (exit 1, as ``echo hi >&-``
    fails in a shell) instead of the command's output vanishing under exit status 0; standard error
    and input get a writable and a readable null device (messages vanish, input is empty).
    """
    for fd, flags, mode in ((0, os.O_RDONLY, "r"), (1, os.O_RDONLY, "w"), (2, os.O_WRONLY, "w")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, flags)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        # the encoding matters little: the stream reads nothing, writes nothing or fails at its first write
        errors = "backslashreplace" if fd == 2 else "strict"
        stream = open(fd, mode, closefd=False, encoding="utf-8", errors=errors)  # noqa: SIM115
        setattr(sys, ("stdin", "stdout", "stderr")[fd], stream)
        setattr(sys, ("__stdin__", "__stdout__", "__stderr__")[fd], stream)


def main() -> object:
    """Run the ``flowrl`` command line."""
    reserve_standard_streams()
    try:
        from flowrl_deploy.cli import app
    except BaseException as exc:
        if interrupt_behind(exc) is None:
            raise
        sys.stderr.write(BEFORE_THE_COMMAND + "\n")
        raise SystemExit(130) from None
    return app()
