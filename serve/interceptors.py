"""The shared-secret check: every call but health probes must carry ``authorization: Bearer <token>``."""

from __future__ import annotations

import hmac
from collections.abc import Callable

import grpc

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
"""Kubernetes and load-balancer probes carry no secret."""


def _deny(request_or_iterator, context: grpc.ServicerContext):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token (send authorization: Bearer <token>)")


_DENY = {
    (False, False): grpc.unary_unary_rpc_method_handler(_deny),
    (False, True): grpc.unary_stream_rpc_method_handler(_deny),
    (True, False): grpc.stream_unary_rpc_method_handler(_deny),
    (True, True): grpc.stream_stream_rpc_method_handler(_deny),
}


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuse calls without the right token with UNAUTHENTICATED (constant-time comparison);
    ``on_refused(method)`` is told of each, with the method's short name (e.g. ``Act``)."""

    def __init__(self, token: str, on_refused: Callable[[str], None]) -> None:
        self._expected = token.encode()
        self._on_refused = on_refused

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return handler
        sent = str(dict(handler_call_details.invocation_metadata or ()).get("authorization", ""))
        scheme, _, credentials = sent.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(credentials.encode(), self._expected):  # RFC 6750
            return handler
        self._on_refused(handler_call_details.method.rsplit("/", 1)[-1])
        return _DENY[(handler.request_streaming, handler.response_streaming)]
