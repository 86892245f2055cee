"""``--watch``: reload the model when its file changes (the ``Reload`` RPC does the same on demand)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("flowrl.serve")


def _stamp(path: Path) -> tuple[float, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime, stat.st_size


class FileWatcher:
    """Poll ``path``; once a change has settled for one interval, call ``reload()``.

    A failed reload is logged and the old model keeps serving; the next change tries again.
    """

    def __init__(self, path: Path, reload: Callable[[], object], interval_s: float = 1.0) -> None:
        self._path = path
        self._reload = reload
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="flowrl-watch", daemon=True)

    def start(self) -> FileWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        served = _stamp(self._path)
        seen = served
        while not self._stop.wait(self._interval):
            now = _stamp(self._path)
            if now is None or now == served:
                seen = now
                continue
            if now != seen:  # still being written: wait for it to settle
                seen = now
                continue
            served = now
            try:
                self._reload()
            except Exception as exc:  # keep serving the old model
                log.error("reload of %s refused: %s", self._path, exc)
