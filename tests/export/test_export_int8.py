"""--dtype int8: the wide layer quantized, fused by onnxruntime, with its own reported (looser) parity."""

from __future__ import annotations

import numpy as np
import onnx
from export_fixtures import SPEC, actor_tensors

from flowrl_deploy.export import ExportConfig, export_checkpoint
from flowrl_deploy.export.graph import VelocityWeights, build_policy_graph, quantize_columns
from flowrl_deploy.runtime import make_session


def test_quantize_columns_round_trips_within_half_a_step():
    w = np.array([[0.5, -2.0], [-1.0, 0.01], [0.25, 1.0]], np.float32)
    q, scale = quantize_columns(w)
    np.testing.assert_allclose(scale, [1.0 / 127, 2.0 / 127])
    assert q.dtype == np.int8 and q[1, 0] == -127 and q[0, 1] == -127
    assert np.all(np.abs(q * scale - w) <= scale / 2 + 1e-7)


def test_int8_export_reports_its_error_and_keeps_the_contract(checkpoint, tmp_path):
    fp32 = export_checkpoint(checkpoint, tmp_path / "fp32.onnx", ExportConfig(samples=20))
    int8 = export_checkpoint(checkpoint, tmp_path / "int8.onnx", ExportConfig(dtype="int8", samples=20))
    assert int8.contract_hash == fp32.contract_hash
    assert int8.provenance["dtype"] == "int8"
    assert 0 < int8.parity.max_abs_error_action < 0.05
    assert not int8.parity.pre_tanh_checked
    assert "int8" in int8.summary() and "half-range" in int8.summary()


def test_onnxruntime_fuses_the_quantized_layer(tmp_path):
    model = build_policy_graph(
        VelocityWeights.from_actor(actor_tensors(), SPEC), SPEC, steps=3, solver="midpoint", dtype="int8"
    )
    onnx.checker.check_model(model, full_check=True)
    dump = tmp_path / "optimized.onnx"
    make_session(model.SerializeToString(), providers=["CPUExecutionProvider"], optimized_model_path=str(dump))
    ops = [n.op_type for n in onnx.load(dump).graph.node]
    assert ops.count("DynamicQuantizeMatMul") == 6
    assert "MatMulInteger" not in ops and "DynamicQuantizeLinear" not in ops
