"""--dtype int8: the wide layer as one MatMulNBits node, with its own reported (looser) parity."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from export_fixtures import SPEC, actor_tensors
from onnx import numpy_helper

from flowrl_deploy.export import ExportConfig, export_checkpoint
from flowrl_deploy.export.graph import VelocityWeights, build_policy_graph, int8_blocks
from flowrl_deploy.export.verify import VerificationError, check_structure, verify_parity
from flowrl_deploy.runtime import make_session


def test_int8_blocks_round_trip_within_half_a_step_per_block():
    w = np.array([[0.5, -2.0, 0.1, 0.01, 3.0], [-1.0, 0.01, 0.0, 0.2, 0.0]], np.float32)
    codes, scale = int8_blocks(w, block=2)
    assert codes.shape == (2, 3, 2) and codes.dtype == np.uint8 and scale.shape == (2, 3)
    np.testing.assert_allclose(scale, np.array([[2.0, 0.1, 3.0], [1.0, 0.2, 0.0]]) / 127, atol=1e-30)
    assert codes[0, 0, 1] == 128 - 127 and codes[0, 2, 0] == 128 + 127 and codes[0, 2, 1] == 128  # zero padding
    restored = ((codes.astype(np.float32) - 128) * scale[..., None]).reshape(2, 6)[:, :5]
    assert np.all(np.abs(restored - w) <= np.repeat(scale, 2, axis=1)[:, :5] / 2 + 1e-7)


def test_int8_layer_matches_its_dequantized_weights_in_onnxruntime():
    """MatMulNBits reads the codes and scales as int8_blocks lays them out (the only int8 error is rounding)."""
    weights = VelocityWeights.from_actor(actor_tensors(), SPEC)
    codes, scale = int8_blocks(weights.w2)
    w2 = ((codes.astype(np.float32) - 128) * scale[..., None]).reshape(SPEC.hidden, -1)[:, : SPEC.hidden]
    dequantized = VelocityWeights(**{**weights.__dict__, "w2": w2})
    rng = np.random.default_rng(0)
    feeds = {"obs": rng.normal(size=(5, SPEC.obs_dim)).astype(np.float32)}
    feeds["noise"] = rng.normal(size=(5, SPEC.act_dim)).astype(np.float32)
    actions = [
        make_session(build_policy_graph(w, SPEC, steps=3, solver="midpoint", dtype=d).SerializeToString()).run(
            None, feeds
        )[0]
        for w, d in ((weights, "int8"), (dequantized, "fp32"))
    ]
    # accuracy level 4 also rounds the layer's input to int8 per block: close, not exact
    np.testing.assert_allclose(actions[0], actions[1], atol=0.02)


def test_int8_export_reports_its_error_and_keeps_the_contract(checkpoint, tmp_path):
    fp32 = export_checkpoint(checkpoint, tmp_path / "fp32.onnx", ExportConfig(steps=10, samples=20))
    int8 = export_checkpoint(checkpoint, tmp_path / "int8.onnx", ExportConfig(steps=10, dtype="int8", samples=20))
    assert int8.contract_hash == fp32.contract_hash
    assert int8.provenance["dtype"] == "int8"
    assert 0 < int8.parity.max_abs_error_action < 0.05
    assert not int8.parity.pre_tanh_checked
    assert "int8" in int8.summary() and "half-range" in int8.summary()


def test_the_quantized_layer_is_one_matmulnbits_node_per_evaluation(tmp_path):
    model = build_policy_graph(
        VelocityWeights.from_actor(actor_tensors(), SPEC), SPEC, steps=3, solver="midpoint", dtype="int8"
    )
    check_structure(model)
    dump = tmp_path / "optimized.onnx"
    make_session(model.SerializeToString(), providers=["CPUExecutionProvider"], optimized_model_path=str(dump))
    ops = [n.op_type for n in onnx.load(dump).graph.node]
    assert ops.count("MatMulNBits") == 6
    assert ops.count("Gemm") == 1 + 2 * 6  # layer 1's observation share once; W_a and W_out per evaluation


def test_int8_verification_refuses_a_graph_whose_weights_are_off():
    """The int8 bounds are loose for rounding, not for a wrong layer: scales of the wrong sign fail them.

    (Not a wrong magnitude: the LayerNorm after the layer undoes any common factor.)"""
    actor = actor_tensors()
    model = build_policy_graph(VelocityWeights.from_actor(actor, SPEC), SPEC, steps=3, solver="midpoint", dtype="int8")
    kwargs = dict(steps=3, solver="midpoint", deterministic=False, batch=None, dtype="int8", samples=20)
    assert verify_parity(model, actor, SPEC, **kwargs).passed
    scales = next(t for t in model.graph.initializer if t.name == "w2.scales")
    scales.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(scales), "w2.scales"))
    with pytest.raises(VerificationError, match=r"mean .* FAILED"):
        verify_parity(model, actor, SPEC, **kwargs)
