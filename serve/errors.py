"""Errors the service reports to clients, each with the gRPC status it maps to."""

from __future__ import annotations

import grpc

from flowrl_deploy.codec import TensorError
from flowrl_deploy.errors import FlowRLError


class ServeError(FlowRLError):
    """An error whose message is safe to send to a client, with its gRPC status code, and what the
    server's log adds to it (``detail``: what the client must not be told, e.g. where a link leads)."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, code: grpc.StatusCode | None = None, detail: str = "") -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.detail = detail


class SessionNotFound(ServeError):
    code = grpc.StatusCode.NOT_FOUND


class SessionLimitReached(ServeError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ContractMismatch(ServeError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class DeadlineExpired(ServeError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotReady(ServeError):
    code = grpc.StatusCode.UNAVAILABLE


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and client-safe message for ``exc``; never a traceback."""
    if isinstance(exc, ServeError):
        return exc.code, str(exc)
    if isinstance(exc, TensorError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, FlowRLError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    return grpc.StatusCode.INTERNAL, "internal server error (details are in the server log)"
