"""The hints a user's type checker reads (the package ships ``py.typed``): user code typed as the README and
docs/ write it passes ``mypy --strict`` against the package as its wheel installs it, and the mistakes the
hints exist for are reported.

mypy runs once for the module, on the user files in ``hints/`` and the Python snippets of the README and docs/, with
the unpacked wheel first on its path (an installed package: ``py.typed`` is needed, and errors inside
the package are not the user's, so mypy keeps them quiet). torch is skipped (read as ``Any``): analysing
it would take ten seconds more and tells nothing about our hints; where it is not installed (a base
install), the training snippet is checked all the same.
"""

import ast
import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import test_packaging
from doc_pages import python_block
from tiny_policy import write_policy

import flowrl_deploy.train
from flowrl_deploy.client import MOVED_TO_SESSION, PolicyClient
from flowrl_deploy.policy import SeededPolicy
from flowrl_deploy.serve import PolicyServer, ServeConfig

ROOT = Path(__file__).resolve().parents[2]
HINTS = Path(__file__).resolve().parent / "hints"

wheel = test_packaging.wheel  # the wheel built from this checkout

MYPY_CONFIG = """\
[mypy]
strict = True
cache_dir = /dev/null
[mypy-torch.*]
follow_imports = skip
ignore_missing_imports = True
"""

EXPECTED = re.compile(r"#\s*error: \[([a-z-]+)\]")
"""How ``hints/mistakes.py`` marks a line mypy must report, with the error's code."""

ROBOT = """\
import numpy as np
import numpy.typing as npt


def running() -> bool:
    return False


def read_sensors() -> list[float]:  # a ROS message's data
    return [0.0] * 5


def apply(action: npt.NDArray[np.float32]) -> None: ...
def sleep_until_next_tick() -> None: ...
def stop_robot() -> None: ...
"""
"""The robot's own functions the control-loop snippet calls, typed as a robot team would."""

DOC_SNIPPETS = {
    "docs_training.py": ("docs/train.md", "Training from Python", ""),
    "docs_serve.py": ("docs/serve.md", "Serving from Python", ""),
    "docs_control_loop.py": ("docs/client.md", "In the robot's control loop (Python, no torch needed)", ROBOT),
    "readme_control_loop.py": ("README.md", "In the robot's control loop", ROBOT),
}
"""The Python snippets checked, by the file, the heading and the prelude each is checked with: the first
``python`` block after the heading."""


@pytest.fixture(scope="module")
def mypy_errors(wheel, tmp_path_factory) -> dict[str, list[tuple[int, str, str]]]:
    """Each checked file's errors as (line, code, message), by file name."""
    work = tmp_path_factory.mktemp("hints")
    site = work / "site"
    wheel.extractall(site)
    (work / "mypy.ini").write_text(MYPY_CONFIG)
    files = sorted(HINTS.glob("*.py"))
    for name, (page, heading, prelude) in DOC_SNIPPETS.items():
        (work / name).write_text(prelude + python_block(page, heading))
        files.append(work / name)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(work / "mypy.ini"), *map(str, files)],
        capture_output=True,
        text=True,
        cwd=work,
        env={**{k: v for k, v in os.environ.items() if k != "MYPYPATH"}, "PYTHONPATH": str(site)},
        timeout=120,
    )
    output = result.stdout + result.stderr
    # mypy must have run and checked every file: a missing mypy (dev extra) fails here, never passes
    checked = re.search(r"(?:Success: no issues found in|checked) (\d+) source files?", output)
    assert checked and int(checked.group(1)) == len(files), output[-3000:]
    errors: dict[str, list[tuple[int, str, str]]] = {path.name: [] for path in files}
    for line in output.splitlines():
        if found := re.match(r"(.+?):(\d+): error: (.*?)(?:  \[([a-z-]+)\])?$", line):
            path, number, message, code = found.groups()
            assert Path(path).name in errors, f"an error outside the user's files: {line}"
            errors[Path(path).name].append((int(number), code or "", message))
    return errors


def test_typed_training_code_passes_mypy_strict(mypy_errors):
    assert mypy_errors["training.py"] == []


def test_observations_as_lists_and_float32_actions_pass_mypy_strict(mypy_errors):
    assert mypy_errors["observations.py"] == []


def test_paths_and_numpy_seeds_the_client_takes_pass_mypy_strict(mypy_errors):
    assert mypy_errors["paths_and_seeds.py"] == []


def test_the_names_that_moved_to_the_session_module_keep_their_types_from_the_client(mypy_errors):
    assert mypy_errors["moved_names.py"] == []


def test_the_clients_typed_moved_names_are_those_its_getattr_loads():
    assert _type_checking_imports(ROOT / "flowrl_deploy" / "client.py") == dict.fromkeys(
        MOVED_TO_SESSION, "flowrl_deploy.session"
    )


def test_a_local_policys_graph_names_and_session_pass_mypy_strict(mypy_errors):
    assert mypy_errors["onnx_runtime.py"] == []


def test_the_generated_grpc_stub_passes_mypy_strict(mypy_errors):
    """``policy_pb2_grpc`` has a stub file (mypy-protobuf's): without it every call of the stub is
    'Call to untyped function' under --strict."""
    assert mypy_errors["raw_grpc.py"] == []


CLIENT_SIDE = ("client", "session", "policy", "ort", "onnxfile", "codec", "noise")
"""The core modules a robot's code calls (the training API is checked through TYPE_CHECKING above)."""


def test_every_public_function_of_the_client_side_is_fully_annotated():
    """An unannotated parameter or return is Any to mypy (``make_session`` returned Any)."""
    missing = []
    for module in map(importlib.import_module, (f"flowrl_deploy.{name}" for name in CLIENT_SIDE)):
        for name, value in vars(module).items():
            if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
                continue
            functions = {name: value} if inspect.isfunction(value) else {}
            if inspect.isclass(value):
                functions |= {
                    f"{name}.{method}": function
                    for method, function in vars(value).items()
                    if inspect.isfunction(function)
                    and (not method.startswith("_") or method in ("__init__", "__call__"))
                }
            for qualified, function in functions.items():
                signature = inspect.signature(function)
                untyped = [p.name for p in signature.parameters.values() if p.annotation is p.empty]
                untyped += ["return"] * (signature.return_annotation is signature.empty)
                missing += [f"{module.__name__}.{qualified}: {p}" for p in untyped if p not in ("self", "cls")]
    assert missing == []


def test_the_paths_and_numpy_seeds_the_hints_allow_work(tmp_path):
    """What ``hints/paths_and_seeds.py`` passes the type checker runs too."""
    pytest.importorskip("cryptography.x509")  # as test_tls: pki makes the certificates with it
    from pki import issue, write_pem

    ca_key, ca_cert = issue("flowrl test CA", ca=True)
    cert, key = map(Path, write_pem(tmp_path, "robot", *issue("robot", ca_key, ca_cert.subject)))
    ca = Path(write_pem(tmp_path, "ca", ca_key, ca_cert)[0])
    PolicyClient("127.0.0.1:1", tls_ca=ca, tls_cert=cert, tls_key=key).close()
    model = write_policy(tmp_path / "policy.onnx")
    obs = [0.1] * SeededPolicy(model).policy.contract.obs_dim
    local = SeededPolicy(model, seed=np.uint64(2**64 - 1))
    local.reseed(np.int64(3))
    with (
        PolicyServer(ServeConfig(str(model), port=0, providers=("CPUExecutionProvider",))).start() as server,
        PolicyClient(server.address) as client,
    ):
        assert client.act(obs, seed=np.uint32(3)).dtype == np.float32
        client.reset("episode", np.int64(3))
        with client.session(period_s=0.5, fallback="local", local_model=model, seed=np.uint64(3)) as session:
            assert session.act(obs).dtype == np.float32
            session.reset(np.int8(4))
            expected = SeededPolicy(model, seed=4, providers=["CPUExecutionProvider"]).act(obs)  # as served
            np.testing.assert_array_equal(session.act(obs), expected)


@pytest.mark.parametrize("name", sorted(DOC_SNIPPETS))
def test_the_doc_snippets_pass_mypy_strict(mypy_errors, name):
    assert mypy_errors[name] == []


def test_mypy_reports_the_mistakes_the_hints_exist_for(mypy_errors):
    """Each marked line is reported with its code, and nothing else: a hint gone ``Any`` fails here."""
    lines = (HINTS / "mistakes.py").read_text().splitlines()
    expected = {(number, m.group(1)) for number, line in enumerate(lines, 1) if (m := EXPECTED.search(line))}
    assert expected
    assert {(number, code) for number, code, _ in mypy_errors["mistakes.py"]} == expected


def _type_checking_imports(path: Path) -> dict[str, str]:
    """The names ``path`` imports in its ``if TYPE_CHECKING:`` block, each with its module; only
    ``from M import X as X`` counts (mypy --strict re-exports nothing else)."""
    tree = ast.parse(path.read_text(), str(path))
    (block,) = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    names = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom), ast.unparse(node)
        for alias in node.names:
            assert alias.asname == alias.name, f"{ast.unparse(node)}: write `{alias.name} as {alias.name}`"
            names[alias.name] = node.module
    return names


def test_the_training_packages_typed_names_are_its_lazy_exports():
    """What type checkers read (TYPE_CHECKING) and what ``__getattr__`` loads cannot drift apart."""
    typed = _type_checking_imports(ROOT / "train" / "__init__.py")
    loaded = {name: f"flowrl_deploy.train.{module}" for name, module in flowrl_deploy.train._EXPORTS.items()}
    assert typed == loaded


def test_importing_the_training_package_and_its_torch_free_names_loads_no_torch():
    code = (
        "import sys; import flowrl_deploy.train as t; t.TrainConfig, t.EvalResult, t.checkpoint_act_fn; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
