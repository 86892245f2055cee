"""--dtype int8: the wide layer as one MatMulNBits node, with its own reported (looser) parity."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from export_fixtures import SPEC, actor_tensors
from onnx import numpy_helper

from flowrl_deploy.export import ExportConfig, export_checkpoint, verify
from flowrl_deploy.export.graph import VelocityWeights, build_policy_graph, int8_blocks
from flowrl_deploy.export.verify import VerificationError, check_structure, verify_parity, with_pre_tanh_output
from flowrl_deploy.ort import make_session

INT8_CHECK = dict(steps=3, solver="midpoint", deterministic=False, batch=None, dtype="int8", samples=20)
"""verify_parity's arguments for the graphs of :func:`int8_graph`."""


def int8_graph(actor: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The int8 policy graph of ``actor``'s weights, sampled as INT8_CHECK verifies it."""
    weights = VelocityWeights.from_actor(actor, SPEC)
    return build_policy_graph(weights, SPEC, steps=INT8_CHECK["steps"], solver=INT8_CHECK["solver"], dtype="int8")


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
    model = int8_graph(actor_tensors())
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
    model = int8_graph(actor)
    assert verify_parity(model, actor, SPEC, **INT8_CHECK).passed
    scales = next(t for t in model.graph.initializer if t.name == "w2.scales")
    scales.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(scales), "w2.scales"))
    with pytest.raises(VerificationError, match=r"mean .* FAILED"):
        verify_parity(model, actor, SPEC, **INT8_CHECK)


def test_int8_verification_refuses_a_small_systematic_bias(monkeypatch):
    """Every action within its own bound (0.25 half-range) but all moved the same way: the mean
    bound (0.02 half-range) is what catches it."""
    actor = actor_tensors()
    biased = {**actor, "velocity.net.6.bias": actor["velocity.net.6.bias"] + np.float32(0.08)}
    model = int8_graph(biased)
    with monkeypatch.context() as per_action_only:
        per_action_only.setattr(verify, "INT8_MEAN_ATOL", np.inf)
        report = verify_parity(model, actor, SPEC, **INT8_CHECK)
    assert report.passed and report.mean_abs_error_action > 1.5 * verify.INT8_MEAN_ATOL
    with pytest.raises(VerificationError, match=r"mean 0\.0[3-9]\d* × half-range.*FAILED"):
        verify_parity(model, actor, SPEC, **INT8_CHECK)


def test_int8_verification_refuses_one_action_far_off_on_one_input(monkeypatch):
    """One action of one input off by half its half-range, every other one right: the mean stays
    within its bound (0.02 half-range), so the per-element bound (0.25) is what catches it."""
    actor = actor_tensors()
    model = int8_graph(actor)
    first_obs = verify.verification_inputs(SPEC, 1, 1, np.random.default_rng(0))[0][0]  # verify_parity's seed 0
    half_range = (SPEC.action_high[0] - SPEC.action_low[0]) / 2
    real_session = verify.make_session

    class OneActionOff:
        def __init__(self, *args, **kwargs):
            self.session = real_session(*args, **kwargs)

        def run(self, names, feeds):
            action, *rest = self.session.run(names, feeds)
            if np.array_equal(feeds["obs"], first_obs):  # the same input gives the same (wrong) action
                action[0, 0] -= np.sign(action[0, 0]) * 0.5 * half_range
            return [action, *rest]

    monkeypatch.setattr(verify, "make_session", OneActionOff)
    with monkeypatch.context() as mean_only:
        mean_only.setattr(verify, "INT8_ACTION_ATOL", np.inf)
        report = verify_parity(model, actor, SPEC, **INT8_CHECK)
    assert report.passed and report.mean_abs_error_action <= verify.INT8_MEAN_ATOL
    assert report.max_abs_error_action_half_ranges > 0.45
    with pytest.raises(VerificationError, match=r"does not match.*max \|Δaction\| = 0\.5\d* × half-range.*FAILED"):
        verify_parity(model, actor, SPEC, **INT8_CHECK)


def test_the_reported_int8_errors_are_in_half_ranges_but_the_absolute_max(reference):
    """|Δaction| / half-range, averaged and maximised over every element (the half-ranges here are 1,
    2 and 0.25), beside the absolute max; the summary names each unit."""
    model = int8_graph(actor_tensors())
    check = {**INT8_CHECK, "batch": 7, "samples": 4}
    report = verify_parity(model, actor_tensors(), SPEC, **check, seed=3)
    session = make_session(with_pre_tanh_output(model).SerializeToString(), providers=["CPUExecutionProvider"])
    half_range = (np.asarray(SPEC.action_high) - np.asarray(SPEC.action_low)) / 2
    errors = []
    for obs, noise in verify.verification_inputs(SPEC, 7, 4, np.random.default_rng(3)):
        action = session.run(None, {"obs": obs, "noise": noise})[0]
        with torch.no_grad():
            pre_tanh = reference.pre_tanh(torch.from_numpy(obs), torch.from_numpy(noise), 3, "midpoint")
            expected = reference.squash(pre_tanh).numpy()
        errors.append(np.abs(action - expected) / half_range)
    assert report.mean_abs_error_action == pytest.approx(np.mean(errors), rel=1e-5)
    assert report.max_abs_error_action_half_ranges == pytest.approx(np.max(errors), rel=1e-5)
    assert report.max_abs_error_action == pytest.approx(np.max(np.array(errors) * half_range), rel=1e-5)
    max_half_ranges, max_absolute = report.max_abs_error_action_half_ranges, report.max_abs_error_action
    assert f"max |Δaction| = {max_half_ranges:.3g} × half-range ({max_absolute:.3g} absolute), mean" in report.summary()
