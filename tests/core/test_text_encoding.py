"""Every file the package reads or writes as text names its encoding: without one, Python uses the
locale's (cp1252 on Windows, until Python 3.15's PEP 686), so what one machine wrote another misreads.
The scan covers open()/io.open()/os.fdopen()/Path.open() in a text mode and Path.read_text()/
write_text(); binary modes and os.open (a file descriptor) carry no encoding."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = ("flowrl_deploy", "train", "export", "serve")  # pyproject's package-dir


def _sources() -> list[Path]:
    files = [path for name in PACKAGE_DIRS for path in sorted((ROOT / name).rglob("*.py"))]
    return [path for path in files if "_pb2" not in path.name]


def _mode(call: ast.Call, position: int) -> ast.expr | None:
    for keyword in call.keywords:
        if keyword.arg == "mode":
            return keyword.value
    return call.args[position] if len(call.args) > position else None


def _is_text_mode(mode: ast.expr | None) -> bool:
    """A mode without 'b' (the default, 'r', is text); a mode not written out counts as text."""
    return not (isinstance(mode, ast.Constant) and isinstance(mode.value, str) and "b" in mode.value)


def _names_encoding(call: ast.Call, position: int) -> bool:
    return any(k.arg == "encoding" for k in call.keywords) or len(call.args) > position


def unencoded_text_io(source: str) -> list[tuple[int, str, str]]:
    """(line, function, call) of each text-mode file call without an encoding in ``source``."""
    found = []

    class Visitor(ast.NodeVisitor):
        function = "<module>"

        def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
            outer, self.function = self.function, node.name
            self.generic_visit(node)
            self.function = outer

        visit_AsyncFunctionDef = visit_FunctionDef

        def visit_Call(self, node: ast.Call) -> None:
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            # (mode's position, encoding's position) among the positional arguments; None: always text
            if name == "open" and (isinstance(func, ast.Name) or owner == "io"):
                positions = (1, 3)  # open(file, mode, buffering, encoding)
            elif name == "fdopen" and owner == "os":
                positions = (1, 3)
            elif name == "open" and owner != "os":  # os.open takes flags, not a mode
                positions = (0, 2)  # Path.open(mode, buffering, encoding)
            elif name == "read_text":
                positions = (None, 0)
            elif name == "write_text":
                positions = (None, 1)
            else:
                positions = None
            if positions is not None:
                mode_at, encoding_at = positions
                text = mode_at is None or _is_text_mode(_mode(node, mode_at))
                if text and not _names_encoding(node, encoding_at):
                    found.append((node.lineno, self.function, ast.unparse(node)))
            self.generic_visit(node)

    Visitor().visit(ast.parse(source))
    return found


@pytest.mark.parametrize(
    ("code", "flagged"),
    [
        ('open(p, "w")', True),
        ("open(p)", True),
        ('p.read_text(errors="replace")', True),
        ("p.write_text(text)", True),
        ('p.open("a", newline="")', True),
        ('os.fdopen(fd, "w")', True),
        ('open(p, "w", encoding="utf-8")', False),
        ('open(p, "rb")', False),
        ('open(p, mode="ab")', False),
        ('p.open("rb")', False),
        ('(out / "x").open("w")', True),
        ('(out / "x").open("rb", 0)', False),
        ('io.open(p, "w")', True),
        ('p.read_text("utf-8")', False),
        ('p.write_text(text, "utf-8")', False),
        ('os.fdopen(fd, "wb")', False),
        ("os.open(p, os.O_RDONLY)", False),
        ("p.read_bytes()", False),
    ],
)
def test_the_scan_tells_text_from_binary_and_sees_an_encoding(code, flagged):
    assert bool(unencoded_text_io(code)) == flagged


def test_every_text_file_the_package_opens_names_its_encoding():
    missing = []
    for path in _sources():
        relative = path.relative_to(ROOT).as_posix()
        for line, function, call in unencoded_text_io(path.read_text(encoding="utf-8")):
            missing.append(f"{relative}:{line} in {function}: {call}")
    assert not missing, "text I/O in the locale's encoding; pass encoding='utf-8':\n" + "\n".join(missing)
