"""The core package (flowrl_deploy/*.py, the client and its control session among them) never reaches into torch or the
train, export and serve stages, and serve (serve/*.py) never into torch, train or export, not even inside a function: a
robot computer installs the core alone, and a server the core and serve alone."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "flowrl_deploy"
SERVE = ROOT / "serve"
FORBIDDEN = ("torch", "flowrl_deploy.train", "flowrl_deploy.export", "flowrl_deploy.serve")
SERVE_FORBIDDEN = ("torch", "flowrl_deploy.train", "flowrl_deploy.export")
"""What serve may not import: the stages that need torch (it serves an ONNX file; a checkpoint's export is injected)."""


def _forbidden(module: str, forbidden: tuple[str, ...] = FORBIDDEN) -> bool:
    return any(module == name or module.startswith(f"{name}.") for name in forbidden)


def _imports(path: Path, package: str = "flowrl_deploy") -> list[str]:
    """Every module ``path`` (a module of ``package``) imports, at its top or inside a function: relative
    imports resolved, and ``importlib.import_module``/``__import__`` of a literal name included."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[: len(parts) + 1 - node.level] if node.level else []  # `from .` is the package itself
            module = ".".join([*base, *([node.module] if node.module else [])])
            names += [module] + [f"{module}.{alias.name}" for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) in ("importlib.import_module", "import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.append(node.args[0].value)
    return names


def _offenders(folder: Path, package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """By module file of ``folder``: the forbidden modules it imports (only files that import some)."""
    found = {
        path.name: [n for n in _imports(path, package) if _forbidden(n, forbidden)]
        for path in sorted(folder.glob("*.py"))
    }
    return {name: modules for name, modules in found.items() if modules}


def test_no_core_module_imports_torch_or_a_stage_anywhere_in_its_code():
    """A lazy import inside a function (how `run_control` once reached into train) counts too."""
    assert _offenders(CORE, "flowrl_deploy", FORBIDDEN) == {}


def test_no_serve_module_imports_torch_train_or_export_anywhere_in_its_code():
    """serve's rule, checked on its source: tests/serve/test_serve_no_torch.py runs a server with torch
    blocked, which misses a lazy import on a path no test takes (a checkpoint's export is passed in,
    :data:`~flowrl_deploy.serve.model.Exporter`, never imported)."""
    assert len(list(SERVE.glob("*.py"))) > 5
    assert _offenders(SERVE, "flowrl_deploy.serve", SERVE_FORBIDDEN) == {}


@pytest.mark.parametrize(
    "line",
    [
        "import torch",
        "import torch.nn as nn",
        "from torch import nn",
        "from flowrl_deploy.train import FlowActor",
        "from flowrl_deploy import export",
        "from flowrl_deploy.export.onnx_policy import export_onnx",
        "from .. import train",
        "from ..export import verify",
        "import flowrl_deploy.export",
        "importlib.import_module('flowrl_deploy.train.loop')",
        "__import__('torch')",
    ],
)
def test_a_serve_module_importing_torch_train_or_export_inside_a_function_is_found(tmp_path, line):
    (tmp_path / "model.py").write_text(f"import numpy\n\n\ndef export(path):\n    {line}\n    return path\n")
    assert list(_offenders(tmp_path, "flowrl_deploy.serve", SERVE_FORBIDDEN)) == ["model.py"]


def test_serve_may_import_the_core_and_itself(tmp_path):
    lines = [
        "import numpy",
        "from flowrl_deploy.policy import OnnxPolicy",
        "from . import batcher",
        "from .. import spec",
    ]
    (tmp_path / "server.py").write_text("\n".join(lines) + "\n")
    assert _offenders(tmp_path, "flowrl_deploy.serve", SERVE_FORBIDDEN) == {}


BLOCKED_IMPORTS = textwrap.dedent(
    """
    import importlib, sys

    FORBIDDEN = {forbidden!r}

    class Blocked:
        def find_spec(self, name, path=None, target=None):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                raise ImportError(f"{{name}} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocked())
    for name in {modules!r}:
        importlib.import_module(name)
    print(sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)))
    """
)


def test_every_core_module_imports_with_torch_and_the_stages_blocked():
    modules = [f"flowrl_deploy.{path.stem}" for path in sorted(CORE.glob("*.py")) if path.stem != "__init__"]
    assert {"flowrl_deploy.client", "flowrl_deploy.session"} <= set(modules)
    script = BLOCKED_IMPORTS.format(forbidden=FORBIDDEN, modules=modules)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
