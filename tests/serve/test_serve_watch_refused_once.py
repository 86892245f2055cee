"""A file `--watch` refused is retried only when it changes again (docs/serve.md: one warning and one
counted failure per change): the refusal's branch put the version text where the file's stamp was
kept, so every poll saw a change and the same unchanged file was reloaded and warned about each second."""

from __future__ import annotations

import logging
import os
import time

from deploying import wait_for

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve import reload as watch


def _replace(path, data: bytes) -> None:
    """Give ``path`` the content ``data`` at once, as a deploy does: written in place, a poll between the
    truncation and the write saw an empty file, a change, and then the written file as another change."""
    incoming = path.with_name(path.name + ".incoming")
    incoming.write_bytes(data)
    os.replace(incoming, path)


def test_a_refused_file_is_tried_once_until_it_changes_again(tmp_path, caplog):
    path = tmp_path / "policy.onnx"
    path.write_bytes(b"first")
    tries: list[bytes] = []

    def refuse() -> None:
        tries.append(path.read_bytes())
        raise FlowRLError("not a policy")

    watcher = watch.FileWatcher(path, refuse, interval_s=0.02, serving=lambda: "v1-0123456789").start()
    try:
        with caplog.at_level(logging.WARNING, logger="flowrl.serve"):
            _replace(path, b"second")
            assert wait_for(lambda: tries)
            time.sleep(0.3)  # 15 intervals, the file unchanged
            assert tries == [b"second"]
            _replace(path, b"third, also refused")
            assert wait_for(lambda: len(tries) == 2)
            time.sleep(0.3)
    finally:
        watcher.stop(5)
    assert tries == [b"second", b"third, also refused"]
    refused = [r.getMessage() for r in caplog.records if "(--watch) refused" in r.getMessage()]
    assert refused == [f"reload of {path} (--watch) refused, still serving v1-0123456789: not a policy"] * 2
