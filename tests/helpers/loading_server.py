"""A policy server caught while it loads its model: it listens, and its health says NOT_SERVING."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest

from flowrl_deploy.serve import PolicyServer, ServeConfig


@contextlib.contextmanager
def loading_server(
    policy: str, monkeypatch: pytest.MonkeyPatch, **settings: object
) -> Iterator[tuple[PolicyServer, threading.Event]]:
    """A started :class:`PolicyServer` of ``policy`` (``ServeConfig(policy, port=0, grace_s=0,
    **settings)``) whose model load is held (health NOT_SERVING) until the test sets the event yielded
    beside it (or 30 s pass); stopped on leaving the block."""
    from flowrl_deploy.serve.model import ModelSlot

    loading, release = threading.Event(), threading.Event()
    load = ModelSlot.load

    def held_load(self, *args, **kwargs):
        loading.set()
        release.wait(30)
        return load(self, *args, **kwargs)

    monkeypatch.setattr(ModelSlot, "load", held_load)
    server = PolicyServer(ServeConfig(policy, **{"port": 0, "grace_s": 0, **settings}))
    starter = threading.Thread(target=server.start)
    starter.start()
    try:
        assert loading.wait(30)
        yield server, release
    finally:
        release.set()
        starter.join(30)
        server.stop()
