"""onnxruntime's telemetry is off unless the user turns it on: on import, onnxruntime 1.31 writes a
device id under $HOME/.cache, looks up a Microsoft host (DNS), and where $HOME is read-only (a
container's) prints an ANSI-coloured warning in its own log format on stderr."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from tiny_policy import write_policy

WARNING = "Failed to persist telemetry device ID"


def _stderr(code: str, *args: str, **env: str) -> str:
    """stderr of ``code`` run with an unwritable $HOME (even for root), ORT_DISABLE_TELEMETRY unset
    unless given in ``env``."""
    environ = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**environ, "HOME": "/proc", "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> str:
    return str(write_policy(tmp_path_factory.mktemp("ort") / "policy.onnx"))


@pytest.mark.parametrize(
    "code",
    [
        "import flowrl_deploy.cli, onnxruntime",  # every command: export's checks and serve's --providers too
        "import sys; from flowrl_deploy.runtime import OnnxPolicy; OnnxPolicy(sys.argv[1])",  # library users
    ],
    ids=["cli", "runtime"],
)
def test_onnxruntime_is_loaded_without_its_telemetry(policy, code):
    assert WARNING not in _stderr(code, policy)


def test_a_users_own_setting_is_kept(policy):
    """The check above can fail: with the user's ORT_DISABLE_TELEMETRY=0, onnxruntime's warning is there."""
    code = "import sys; from flowrl_deploy.runtime import OnnxPolicy; OnnxPolicy(sys.argv[1])"
    assert WARNING in _stderr(code, policy, ORT_DISABLE_TELEMETRY="0")
