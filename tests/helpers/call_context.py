"""A stand-in for gRPC's ``ServicerContext`` in tests that drive an interceptor's handler directly."""

from __future__ import annotations

from collections.abc import Callable

import grpc


class CallContext:
    """A call in flight until :meth:`end`, when gRPC calls its end callbacks (once). ``ended``: a
    call gRPC ended before its handler ran, whose ``add_callback`` refuses the callback (False)."""

    def __init__(self, ended: bool = False) -> None:
        self.ended = ended
        self.callbacks: list[Callable[[], None]] = []

    def add_callback(self, callback: Callable[[], None]) -> bool:
        if self.ended:
            return False
        self.callbacks.append(callback)
        return True

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise grpc.RpcError(code, details)

    def end(self) -> None:
        self.ended = True
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback()
