"""Errors a user can act on. The CLI prints their message and exits 1, never a traceback."""


class FlowRLError(Exception):
    """Base class for every error whose message is meant for the user."""


class SpecError(FlowRLError):
    """A policy spec or contract is missing a field or holds an impossible value."""


class CheckpointError(FlowRLError):
    """A checkpoint is missing, corrupt, or was not written by flowrl-deploy."""


class EnvIdError(FlowRLError):
    """An environment id cannot be parsed or names no known task."""
