"""onnxruntime's own logger printed its lines coloured (ANSI codes even into a pipe or the journal)
and split over two lines, saying what flowrl's one-line errors say: it now prints its errors only,
and nothing for a provider asked for by name that cannot start, which flowrl refuses in one line."""

from __future__ import annotations

import logging
import subprocess
import sys

from tiny_policy import write_policy

from flowrl_deploy.ort import onnxruntime_severity

SCRIPT = """
import sys
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.ort import make_session
try:
    make_session(sys.argv[1], providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
except FlowRLError as exc:
    print(f"error: {exc}", file=sys.stderr)
"""


def test_a_provider_that_cannot_start_is_said_once_in_flowrls_line(tmp_path):
    policy = write_policy(tmp_path / "policy.onnx")
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(policy)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert ":onnxruntime:" not in result.stderr and "\x1b[" not in result.stderr, result.stderr
    # where CUDA runs (a GPU machine) nothing is refused; elsewhere one line says why
    assert len(result.stderr.splitlines()) <= 1, result.stderr


def test_a_provider_this_build_does_not_offer_is_refused_in_one_line_before_onnxruntime_warns(tmp_path):
    """A provider onnxruntime knows but this build lacks (CUDA in the CPU-only onnxruntime of macOS and
    aarch64 installs; MIGraphX here) got onnxruntime's two-line UserWarning before flowrl's refusal."""
    policy = write_policy(tmp_path / "policy.onnx")
    script = SCRIPT.replace('"CUDAExecutionProvider", ', '"MIGraphXExecutionProvider", ')
    result = subprocess.run([sys.executable, "-c", script, str(policy)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: onnxruntime could not start MIGraphXExecutionProvider here: this onnxruntime build")
    assert "does not offer it" in line


def test_onnxruntime_warnings_print_while_flowrl_logs_debug():
    flowrl = logging.getLogger("flowrl")
    previous = flowrl.level
    try:
        flowrl.setLevel(logging.INFO)
        assert onnxruntime_severity() == 3
        flowrl.setLevel(logging.DEBUG)
        assert onnxruntime_severity() == 2
    finally:
        flowrl.setLevel(previous)
