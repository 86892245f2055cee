"""The CLI on a stdout that is not UTF-8 (Windows when redirected or piped: cp1252): `flowrl --help`,
`inspect` and `export` printed '→' or 'Δ' and died with UnicodeEncodeError, `export` after writing its
file, so a script believed the export had failed. Characters the encoding lacks are replaced instead."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from tiny_policy import write_policy


def flowrl(cwd, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "cp1252", "PYTHONUTF8": "0"}
    return subprocess.run(
        [sys.executable, "-m", "flowrl_deploy.cli", *args],
        cwd=cwd, env=env, capture_output=True, timeout=300,
    )  # fmt: skip


def test_help_and_inspect_on_a_cp1252_stdout(tmp_path):
    result = flowrl(tmp_path, "--help")
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    assert b"train ? checkpoint ? export" in result.stdout  # '→' is not in cp1252
    policy = write_policy(tmp_path / "p.onnx")
    result = flowrl(tmp_path, "inspect", str(policy))
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]


def test_a_utf8_stdout_is_left_alone(tmp_path):
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    result = subprocess.run([sys.executable, "-m", "flowrl_deploy.cli", "--help"], cwd=tmp_path, env=env,
                            capture_output=True, timeout=300)  # fmt: skip
    assert result.returncode == 0 and "train → checkpoint → export".encode() in result.stdout


def test_export_on_a_cp1252_stdout_exits_0(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from export_fixtures import saved_checkpoint  # torch: after the skips

    checkpoint = saved_checkpoint(tmp_path)
    result = flowrl(tmp_path, "export", str(checkpoint), "--out", str(tmp_path / "p.onnx"))
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    assert (tmp_path / "p.onnx").is_file()
