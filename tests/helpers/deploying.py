"""What a deploy script does to a watched model file, and a wait for what the server does next."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path


def deploy(source: Path, target: Path) -> None:
    """Replace ``target`` by a copy of ``source`` atomically, as a deploy script should."""
    incoming = target.with_name("incoming.tmp")
    shutil.copy(source, incoming)
    os.replace(incoming, target)


def wait_for(condition: Callable[[], object], timeout_s: float = 30.0) -> bool:
    """Whether ``condition()`` holds within ``timeout_s`` (polled every 20 ms)."""
    until = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < until:
        time.sleep(0.02)
    return bool(condition())
