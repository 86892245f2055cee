"""Errors a user can act on. The CLI prints their message and exits 1, never a traceback."""


class FlowRLError(Exception):
    """Base class for every error whose message is meant for the user."""


class SpecError(FlowRLError):
    """A policy spec or contract is missing a field or holds an impossible value."""


class CheckpointError(FlowRLError):
    """A checkpoint is missing, corrupt, or was not written by flowrl-deploy."""


class EnvIdError(FlowRLError):
    """An environment id cannot be parsed or names no known task."""


class Interrupted(KeyboardInterrupt):
    """A stop signal that interrupts at once (``flowrl train``'s second Ctrl-C; a repeated SIGTERM
    lets the final save finish): like Ctrl-C's KeyboardInterrupt, but it says which signal came
    (``signum``), so that the command's exit status is the shell's 128 + signal (130 for SIGINT)."""

    def __init__(self, signum: int) -> None:
        super().__init__()
        self.signum = signum
