"""The client SDK, the command modules a reader meets first and the export's modules have every argument
and return typed (ruff's ANN001/ANN201/ANN202; the project does not select ANN for the whole tree yet, so
this test keeps these files typed). Read from the syntax trees: nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TYPED = (
    "flowrl_deploy/client.py",
    "flowrl_deploy/cli/_common.py",
    "flowrl_deploy/cli/eval.py",
    "flowrl_deploy/cli/export.py",
    "flowrl_deploy/cli/query.py",
    "flowrl_deploy/cli/serve.py",
    "flowrl_deploy/cli/stats.py",
    "flowrl_deploy/checkpoint.py",
    "flowrl_deploy/codec.py",
    "flowrl_deploy/contract.py",
    "flowrl_deploy/errors.py",
    "flowrl_deploy/fieldtypes.py",
    "flowrl_deploy/onnxfile.py",
    "flowrl_deploy/ort.py",
    "flowrl_deploy/policy.py",
    "export/exporter.py",
    "export/graph.py",
    "export/inspect.py",
    "train/ode.py",
)


def _untyped(path: Path) -> list[str]:
    """Each function of ``path`` (nested ones too) lacking a return annotation or an argument's (but
    ``self`` and ``cls`` of a method, and ``*args``/``**kwargs``, which ANN002/ANN003 cover), as 'line name'."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        arguments = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
        if arguments and arguments[0].arg in ("self", "cls"):
            arguments = arguments[1:]
        missing = [a.arg for a in arguments if a.annotation is None]
        if node.returns is None and node.name != "__init__":
            missing.append("return")
        if missing:
            found.append(f"{node.lineno} {node.name}: {', '.join(missing)}")
    return found


@pytest.mark.parametrize("file", TYPED)
def test_every_argument_and_return_is_typed(file):
    assert _untyped(ROOT / file) == []
