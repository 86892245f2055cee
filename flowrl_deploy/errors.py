"""Errors a user can act on. The CLI prints their message and exits 1, never a traceback."""


def printable(text: object, limit: int | None = None) -> str:
    """``text`` (cut at ``limit`` characters, marked with '…') with each unprintable character (newline,
    ANSI escape, NUL, a Unicode line separator) escaped as ``repr`` writes it: a name someone else chose
    (a client's session id, a path, a lock file's holder), printed or logged as it is, could forge lines
    or drive the operator's terminal."""
    text = str(text)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def counted(count: int, word: str, plural: str = "") -> str:
    """``count`` and ``word``, in the plural (``plural``, else ``word`` + s) unless it is 1: '1 batch', '2 batches'."""
    return f"{count} {word if count == 1 else plural or word + 's'}"


class FlowRLError(Exception):
    """Base class for every error whose message is meant for the user."""


class SpecError(FlowRLError):
    """A policy spec or contract is missing a field or holds an impossible value."""


class CheckpointError(FlowRLError):
    """A checkpoint is missing, corrupt, or was not written by flowrl-deploy."""


class EnvIdError(FlowRLError):
    """An environment id cannot be parsed or names no known task."""


class SimulationError(FlowRLError):
    """A simulator cannot go on from its state: dm_control raised a PhysicsError (MuJoCo's warnings of an
    unstable simulation, such as mjWARN_BADQACC), or a step returned a NaN or infinite observation or
    reward. The episode ends there; the environment must be reset before its next step."""


class Interrupted(KeyboardInterrupt):
    """A stop signal that interrupts at once (``flowrl train``'s second Ctrl-C; a repeated SIGTERM
    lets the final save finish): like Ctrl-C's KeyboardInterrupt, but it says which signal came
    (``signum``), so that the command's exit status is the shell's 128 + signal (130 for SIGINT)."""

    def __init__(self, signum: int) -> None:
        super().__init__()
        self.signum = signum
