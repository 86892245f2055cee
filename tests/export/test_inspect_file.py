"""`flowrl inspect` reads the file itself, not an onnxruntime session: a file the installed
onnxruntime cannot load (a newer IR version, an op it lacks) is still shown, with or without onnx."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.export import ExportConfig, export_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def future_file(checkpoint, tmp_path_factory):
    """An export restamped with an IR version no onnxruntime loads yet."""
    path = tmp_path_factory.mktemp("future") / "p.onnx"
    report = export_checkpoint(checkpoint, path, ExportConfig(steps=1, samples=3))
    model = onnx.load(str(path))
    model.ir_version = 99
    onnx.save(model, str(path))
    return path, report.contract_hash


def test_inspect_reads_a_file_onnxruntime_cannot_load(future_file):
    path, contract_hash = future_file
    text = runner.invoke(app, ["inspect", str(path)])
    assert text.exit_code == 0, text.output
    assert f"contract     {contract_hash}" in text.output
    assert "obs ['batch', 5] tensor(float), noise ['batch', 3] tensor(float)" in text.output
    info = json.loads(runner.invoke(app, ["inspect", str(path), "--json"]).output)
    assert info["contract_hash"] == contract_hash
    assert info["inputs"] == [
        {"name": "obs", "shape": ["batch", 5], "type": "tensor(float)"},
        {"name": "noise", "shape": ["batch", 3], "type": "tensor(float)"},
    ]
    assert info["outputs"] == [{"name": "action", "shape": ["batch", 3], "type": "tensor(float)"}]


def test_inspect_reads_it_without_onnx_or_torch(future_file):
    """A robot's base install has neither onnx nor torch."""
    path, contract_hash = future_file
    code = (
        "import sys; sys.modules.update(torch=None, onnx=None)\n"
        "from typer.testing import CliRunner\n"
        "from flowrl_deploy.cli import app\n"
        f"print(CliRunner().invoke(app, ['inspect', {str(path)!r}]).output)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"contract     {contract_hash}" in result.stdout, result.stdout


def test_a_fixed_batch_shows_its_size(checkpoint, tmp_path):
    report = export_checkpoint(checkpoint, tmp_path / "b4.onnx", ExportConfig(steps=1, samples=3, batch=4))
    text = runner.invoke(app, ["inspect", str(report.path)])
    assert text.exit_code == 0, text.output
    assert "obs [4, 5] tensor(float)" in text.output


def test_inspect_reports_the_files_own_opset_not_the_one_recorded_at_export(checkpoint, tmp_path):
    """A file converted after export (onnx.version_converter) is run at its own opset."""
    from onnx import version_converter

    report = export_checkpoint(checkpoint, tmp_path / "p.onnx", ExportConfig(steps=1, samples=3))
    onnx.save(version_converter.convert_version(onnx.load(str(report.path)), 17), str(tmp_path / "p17.onnx"))
    text = runner.invoke(app, ["inspect", str(tmp_path / "p17.onnx")])
    assert text.exit_code == 0, text.output
    assert "opset        ai.onnx 17 (IR version 8)" in text.output
    assert "needs        ai.onnx LayerNormalization (opset >= 17; TensorRT >= 8.6)\n" in text.output
    info = json.loads(runner.invoke(app, ["inspect", str(tmp_path / "p17.onnx"), "--json"]).output)
    assert info["opsets"] == {"ai.onnx": 17} and info["ir_version"] == 8
    assert {"Gemm", "LayerNormalization", "Elu", "Tanh", "Clip"} <= set(info["ops"]["ai.onnx"])


def test_inspect_says_what_an_int8_file_needs(checkpoint, tmp_path):
    report = export_checkpoint(checkpoint, tmp_path / "q.onnx", ExportConfig(steps=1, samples=3, dtype="int8"))
    text = runner.invoke(app, ["inspect", str(report.path)])
    assert text.exit_code == 0, text.output
    assert "opset        ai.onnx 18, com.microsoft 1" in text.output
    assert "\n             com.microsoft MatMulNBits (onnxruntime >= 1.22; not TensorRT)\n" in text.output
    info = json.loads(runner.invoke(app, ["inspect", str(report.path), "--json"]).output)
    assert info["opsets"] == {"ai.onnx": 18, "com.microsoft": 1}
    assert info["ops"]["com.microsoft"] == ["MatMulNBits"]
    assert "com.microsoft MatMulNBits (onnxruntime >= 1.22; not TensorRT)" in info["needs"]
