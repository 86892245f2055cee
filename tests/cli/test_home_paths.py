"""A path given as `~/x` where no shell expanded it (a Makefile variable, a `subprocess` list, `--out=~/x`, which
bash leaves alone) made a folder named `~` in the working one; `rm -rf ~` then takes the home folder for it."""

from __future__ import annotations

import os
import subprocess
import sys

from flowrl_deploy.cli import home_expanded


def test_a_leading_tilde_of_an_argument_or_an_options_value_is_the_home_folder(monkeypatch):
    monkeypatch.setenv("HOME", "/home/robot")
    argv = ["export", "~/runs/a", "--out=~/p.onnx", "--json", "~", "-o", "~/q.onnx"]
    assert home_expanded(argv) == [
        "export", "/home/robot/runs/a", "--out=/home/robot/p.onnx", "--json", "/home/robot", "-o", "/home/robot/q.onnx"
    ]  # fmt: skip


def test_other_tildes_are_left_as_they_are(monkeypatch):
    monkeypatch.setenv("HOME", "/home/robot")
    argv = ["query", "--obs", "[1, 2]", "~robot/x", "a~/b", "--token=~secret", "x=~/y", "--out=a/~/b"]
    assert home_expanded(argv) == argv


def test_a_token_is_never_expanded(monkeypatch):
    """`--token ~/s3cret` became the home folder's path, where FLOWRL_TOKEN and PolicyClient(token=…) keep it:
    every call of a client given it another way was refused, PERMISSION_DENIED, with no hint why."""
    monkeypatch.setenv("HOME", "/home/robot")
    argv = ["serve", "p.onnx", "--token", "~/s3cret", "--token=~/s3cret", "--out", "~/x"]
    assert home_expanded(argv) == [*argv[:-1], "/home/robot/x"]


def test_on_windows_click_expands_it(monkeypatch):
    monkeypatch.setattr(os, "name", "nt")
    assert home_expanded(["inspect", "~/p.onnx"]) == ["inspect", "~/p.onnx"]


def test_flowrl_expands_it_in_its_own_command_line(tmp_path):
    ran = subprocess.run(
        [sys.executable, "-m", "flowrl_deploy", "inspect", "~/missing.onnx"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert ran.returncode == 1
    assert ran.stderr == f"error: ONNX model not found: {tmp_path / 'home' / 'missing.onnx'}\n"
