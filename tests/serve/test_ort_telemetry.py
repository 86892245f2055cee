"""onnxruntime's telemetry is off unless the user turns it on: on import, onnxruntime 1.31 writes a
device id under $HOME/.cache, looks up a Microsoft host (DNS), and where $HOME is read-only (a
container's) prints an ANSI-coloured warning in its own log format on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tiny_policy import write_policy

WARNING = "Failed to persist telemetry device ID"


def _run(code: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``code`` run with an unwritable $HOME (even for root), ORT_DISABLE_TELEMETRY unset unless
    given in ``env``."""
    environ = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**environ, "HOME": "/proc", "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result


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
    assert WARNING not in _run(code, policy).stderr


@pytest.mark.parametrize(("users", "seen"), [(None, "1"), ("0", "0"), ("1", "1")])
def test_the_runtime_module_sets_the_default_and_keeps_a_users_own_setting(users, seen):
    """onnxruntime of any version reads the variable when it is imported, which flowrl_deploy.runtime does."""
    code = "import os, flowrl_deploy.runtime; print(os.environ['ORT_DISABLE_TELEMETRY'])"
    env = {} if users is None else {"ORT_DISABLE_TELEMETRY": users}
    assert _run(code, **env).stdout.split() == [seen]


SPY = """
import json, os, sys
seen = {}
class Spy:  # notes the variable as each module that imports onnxruntime is imported
    def find_spec(self, name, path=None, target=None):
        if name in ("onnxruntime", "flowrl_deploy.runtime"):
            seen.setdefault(name, os.environ.get("ORT_DISABLE_TELEMETRY"))
sys.meta_path.insert(0, Spy())
import flowrl_deploy.cli
print(json.dumps(seen))
"""


def test_the_cli_sets_the_default_before_any_module_that_imports_onnxruntime_is_imported():
    """The CLI's own default, not the runtime module's, is there when whichever module imports
    onnxruntime first is imported (a command module may import onnxruntime itself)."""
    seen = json.loads(_run(SPY).stdout)
    assert seen and set(seen.values()) == {"1"}, seen


def test_the_warning_check_can_fail(policy):
    """With the user's ORT_DISABLE_TELEMETRY=0, onnxruntime's warning is there (where this
    onnxruntime has telemetry: 1.31 does, the 1.23 that Python 3.10 gets does not)."""
    import onnxruntime

    code = "import sys; from flowrl_deploy.runtime import OnnxPolicy; OnnxPolicy(sys.argv[1])"
    stderr = _run(code, policy, ORT_DISABLE_TELEMETRY="0").stderr
    if WARNING not in stderr and "telemetry" not in stderr.lower():
        pytest.skip(f"onnxruntime {onnxruntime.__version__} writes no telemetry device id: nothing to turn off")
    assert WARNING in stderr
