"""The command line starts without protobuf: train, export, inspect and --help need no wire format,
so a protobuf release that the generated modules refuse breaks only the commands that call a server."""

from __future__ import annotations

import subprocess
import sys

BLOCKED = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "google.protobuf" or name.startswith("google.protobuf."):
            raise ImportError(f"blocked {name}")

sys.meta_path.insert(0, Block())
from flowrl_deploy.cli import app

try:
    app(["--help"])
except SystemExit as exc:
    sys.exit(exc.code)
"""


def test_the_cli_and_its_help_start_without_protobuf():
    result = subprocess.run([sys.executable, "-c", BLOCKED], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage: " in result.stdout and "stats" in result.stdout
