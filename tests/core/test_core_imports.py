"""The core package (flowrl_deploy/*.py, the client and its control session among them) never reaches into torch or the
train, export and serve stages, not even inside a function: a robot computer installs it alone."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "flowrl_deploy"
FORBIDDEN = ("torch", "flowrl_deploy.train", "flowrl_deploy.export", "flowrl_deploy.serve")


def _forbidden(module: str) -> bool:
    return any(module == name or module.startswith(f"{name}.") for name in FORBIDDEN)


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports, at its top or inside a function."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def test_no_core_module_imports_torch_or_a_stage_anywhere_in_its_code():
    """A lazy import inside a function (how `run_control` once reached into train) counts too."""
    offenders = {path.name: [name for name in _imports(path) if _forbidden(name)] for path in sorted(CORE.glob("*.py"))}
    assert {name: found for name, found in offenders.items() if found} == {}


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
