"""onnxruntime's telemetry is off unless the user turns it on: on import, onnxruntime 1.31 writes a
device id under $HOME/.cache, looks up a Microsoft host (DNS), and where $HOME is read-only (a
container's) prints an ANSI-coloured warning in its own log format on stderr. The default is set in
one place, flowrl_deploy.ort, through which every module of the package imports onnxruntime (importing
flowrl_deploy.runtime, the documented path of OnnxPolicy, imports it)."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_policy import write_policy

WARNING = "Failed to persist telemetry device ID"
CI_MARKERS = ("CI", "TF_BUILD", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "TRAVIS", "JENKINS_URL",
              "CODEBUILD_BUILD_ID", "BUILDKITE", "TEAMCITY_VERSION", "APPVEYOR", "BITBUCKET_BUILD_NUMBER")  # fmt: skip
"""Variables under which onnxruntime (1.31) keeps its telemetry off by itself, as a CI machine: in a CI run
(`CI=true bash .ci/run`) the check that the warning can appear skipped, and the tests that flowrl turns it
off passed whatever flowrl did. The list is the one in onnxruntime's library (`strings`); CI and
TRAVIS were tried."""


def _run(code: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``code`` run as on a user's machine with an unwritable $HOME and $XDG_CACHE_HOME (even for root:
    onnxruntime writes its device id under the latter when it is set, and then warns of nothing, whether
    telemetry is on or off), none of :data:`CI_MARKERS`, ORT_DISABLE_TELEMETRY unset unless given in ``env``."""
    environ = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY" and k not in CI_MARKERS}
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**environ, "HOME": "/proc", "XDG_CACHE_HOME": "/proc", "OMP_NUM_THREADS": "1", **env},
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
        "import flowrl_deploy.cli, onnxruntime",  # every command
        "import sys; from flowrl_deploy.runtime import OnnxPolicy; OnnxPolicy(sys.argv[1])",  # library users
    ],
    ids=["cli", "runtime"],
)
def test_onnxruntime_is_loaded_without_its_telemetry(policy, code):
    assert WARNING not in _run(code, policy).stderr


@pytest.mark.parametrize("module", ["flowrl_deploy.ort", "flowrl_deploy.runtime"])
@pytest.mark.parametrize(("users", "seen"), [(None, "1"), ("0", "0"), ("1", "1")])
def test_the_runtime_module_sets_the_default_and_keeps_a_users_own_setting(module, users, seen):
    """onnxruntime of any version reads the variable when it is imported, which flowrl_deploy.ort does (and
    so flowrl_deploy.runtime, which the deployment docs name)."""
    code = f"import os, {module}; print(os.environ['ORT_DISABLE_TELEMETRY'])"
    env = {} if users is None else {"ORT_DISABLE_TELEMETRY": users}
    assert _run(code, **env).stdout.split() == [seen]


SPY = """
import json, os, sys
seen = []
class Spy:  # notes the variable as onnxruntime is imported, by whichever module
    def find_spec(self, name, path=None, target=None):
        if name == "onnxruntime":
            seen.append(os.environ.get("ORT_DISABLE_TELEMETRY"))
sys.meta_path.insert(0, Spy())
{code}
print(json.dumps(seen))
"""


@pytest.mark.parametrize(
    "code",
    [
        "from flowrl_deploy.cli.serve import parse_providers; parse_providers('cpu')",  # flowrl serve --providers
        "from flowrl_deploy.export.graph import newest_opset; newest_opset()",  # flowrl export's opset check
        "from flowrl_deploy.ort import default_providers; default_providers()",
    ],
    ids=["serve --providers", "export opset", "runtime"],
)
def test_every_module_that_loads_onnxruntime_loads_it_with_telemetry_off(code):
    """Whichever module imports onnxruntime first, in a program that imported nothing else of the
    package (a command's own module, a library user's export)."""
    if "export" in code and importlib.util.find_spec("onnx") is None:
        pytest.skip("the export stage needs onnx: pip install 'flowrl-deploy[export]'")
    seen = json.loads(_run(SPY.format(code=code)).stdout)
    assert seen[:1] == ["1"], seen


ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ("flowrl_deploy", "train", "export", "serve")
"""The package's source folders (pyproject's package-dir)."""
ORT = ROOT / "flowrl_deploy" / "ort.py"


def _loads_onnxruntime(source: str) -> list[int]:
    """The lines of ``source`` that import onnxruntime when they run (``import``, ``from … import``,
    ``importlib.import_module`` or ``__import__``), those under ``if TYPE_CHECKING:`` aside."""
    tree = ast.parse(source)
    hints_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for statement in node.body
        for inner in ast.walk(statement)
    }
    lines = []
    for node in ast.walk(tree):
        if id(node) in hints_only:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        elif (
            isinstance(node, ast.Call)
            and ast.unparse(node.func).split(".")[-1] in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names = [str(node.args[0].value)]
        else:
            continue
        if any(name == "onnxruntime" or name.startswith("onnxruntime.") for name in names):
            lines.append(node.lineno)
    return sorted(lines)


def test_no_module_but_the_runtime_module_imports_onnxruntime():
    """The telemetry default is set where onnxruntime is imported; a module that imported it itself
    would load it without the default whenever it came first (as `flowrl serve --providers` and
    export's opset check did, the CLI setting the default a second time to cover them)."""
    offenders = {
        str(path.relative_to(ROOT)): lines
        for folder in PACKAGE
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != ORT and (lines := _loads_onnxruntime(path.read_text()))
    }
    assert offenders == {}, "import it as flowrl_deploy.ort.import_onnxruntime() instead"
    assert _loads_onnxruntime(ORT.read_text())  # the scan sees the one place that does


def test_the_scan_sees_each_way_of_importing_onnxruntime():
    source = """
import typing
import onnxruntime as ort
from onnxruntime import InferenceSession
import onnxruntime.capi
import onnxruntime_extensions
def f():
    import importlib
    return importlib.import_module("onnxruntime"), __import__("onnxruntime")
if typing.TYPE_CHECKING:
    import onnxruntime
"""
    assert _loads_onnxruntime(source) == [3, 4, 5, 9, 9]


def test_the_warning_check_can_fail(policy):
    """With the user's ORT_DISABLE_TELEMETRY=0, onnxruntime's warning is there (where this
    onnxruntime has telemetry: 1.31 does, the 1.23 that Python 3.10 gets does not)."""
    import onnxruntime

    code = "import sys; from flowrl_deploy.runtime import OnnxPolicy; OnnxPolicy(sys.argv[1])"
    stderr = _run(code, policy, ORT_DISABLE_TELEMETRY="0").stderr
    if WARNING not in stderr and "telemetry" not in stderr.lower():
        pytest.skip(f"onnxruntime {onnxruntime.__version__} writes no telemetry device id: nothing to turn off")
    assert WARNING in stderr
