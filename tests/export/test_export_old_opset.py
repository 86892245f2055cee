"""--opset 13 to 16: LayerNormalization (opset 17) decomposed into basic ops, for older runtimes
(TensorRT 8.5, onnxruntime < 1.14), with the actions of the default opset-18 graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from export_fixtures import SPEC
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.export import ExportConfig, export_checkpoint
from flowrl_deploy.policy import OnnxPolicy

runner = CliRunner()


@pytest.mark.parametrize(("opset", "optimize", "dtype"), [(13, True, "fp32"), (16, False, "fp32"), (13, True, "int8")])
def test_an_old_opset_graph_has_no_layer_normalization_and_the_same_actions(
    checkpoint, tmp_path, opset, optimize, dtype
):
    config = ExportConfig(steps=2, samples=20, optimize=optimize, dtype=dtype)
    new = export_checkpoint(checkpoint, tmp_path / "p18.onnx", config)
    old = export_checkpoint(checkpoint, tmp_path / "old.onnx", ExportConfig(**{**config.to_dict(), "opset": opset}))
    assert old.parity is not None and old.parity.passed  # against the torch actor, at the usual tolerance
    model = onnx.load(str(old.path))
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    assert "LayerNormalization" not in {n.op_type for n in model.graph.node}
    assert {"ReduceMean", "Sqrt", "Div"} <= {n.op_type for n in model.graph.node}

    rng = np.random.default_rng(0)
    obs = rng.standard_normal((64, SPEC.obs_dim)).astype(np.float32) * 3
    noise = rng.standard_normal((64, SPEC.act_dim)).astype(np.float32)
    a18 = OnnxPolicy(new.path, providers=["CPUExecutionProvider"]).act(obs, noise)
    a_old = OnnxPolicy(old.path, providers=["CPUExecutionProvider"]).act(obs, noise)
    np.testing.assert_allclose(a_old, a18, atol=1e-5, rtol=0)
    assert old.contract_hash == new.contract_hash


def test_opsets_below_13_are_refused_in_a_line(checkpoint, tmp_path):
    with pytest.raises(FlowRLError, match=r"--opset must be >= 13, got 12"):
        ExportConfig(opset=12)
    result = runner.invoke(app, ["export", str(checkpoint), "--opset", "12", "--out", str(tmp_path / "p.onnx")])
    assert result.exit_code == 1 and "--opset must be >= 13, got 12" in result.output
    assert not (tmp_path / "p.onnx").exists()


def test_inspect_shows_no_runtime_needs_for_an_opset_13_graph(checkpoint, tmp_path):
    report = export_checkpoint(checkpoint, tmp_path / "p13.onnx", ExportConfig(steps=1, samples=3, opset=13))
    text = runner.invoke(app, ["inspect", str(report.path)])
    assert text.exit_code == 0, text.output
    assert "opset        ai.onnx 13 (IR version 7)\nneeds        standard ONNX ops only\n" in text.output
