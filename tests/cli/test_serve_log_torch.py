"""torch's INFO lines stay out of `flowrl serve`'s log: its atexit cache statistics
(``torch._subclasses.fake_tensor``) came after "stopped" when a stop cut torch's import short,
before torch's own logging set-up had put its loggers at WARNING."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.parametrize("level", ["info", "debug"])
def test_torchs_loggers_log_warnings_and_above_only(level):
    script = (
        "import logging; from flowrl_deploy.cli.serve import configure_logging; "
        f"configure_logging('json', {level!r}); "
        "fake = logging.getLogger('torch._subclasses.fake_tensor'); "
        "fake.info('FakeTensor cache stats:'); fake.debug('cache_hits: 0'); fake.warning('theirs'); "
        "logging.getLogger('grpc').info('grpc stays at INFO'); logging.getLogger('flowrl.serve').info('mine')"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(entry["level"], entry["logger"], entry["message"]) for entry in entries] == [
        ("WARNING", "torch._subclasses.fake_tensor", "theirs"),
        ("INFO", "grpc", "grpc stays at INFO"),
        ("INFO", "flowrl.serve", "mine"),
    ], result.stderr
