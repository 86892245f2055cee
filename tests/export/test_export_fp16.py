"""--dtype fp16: the sampler in float16 behind a float32 interface, with its own reported (looser) parity."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from export_fixtures import SPEC, actor_tensors
from onnx import TensorProto
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.export import ExportConfig, export_checkpoint, verify
from flowrl_deploy.export.graph import VelocityWeights, build_policy_graph
from flowrl_deploy.export.verify import VerificationError, check_structure, verify_parity
from flowrl_deploy.ort import make_session

runner = CliRunner()
FP16_CHECK = dict(steps=4, solver="midpoint", deterministic=False, batch=None, dtype="fp16", samples=20)
"""verify_parity's arguments for the graphs of :func:`fp16_graph` (batch None: 1, 2, 7 and 64)."""


def fp16_graph(actor: dict[str, np.ndarray] | None = None, **kwargs) -> onnx.ModelProto:
    """The fp16 policy graph of ``actor``'s weights (default: the test policy's), checked to be one."""
    weights = VelocityWeights.from_actor(actor or actor_tensors(), SPEC)
    options = {"steps": FP16_CHECK["steps"], "solver": FP16_CHECK["solver"], "dtype": "fp16"} | kwargs
    model = build_policy_graph(weights, SPEC, **options)
    assert next(t for t in model.graph.initializer if t.name == "w2").data_type == TensorProto.FLOAT16
    return model


def run(model: onnx.ModelProto, obs: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
    session = make_session(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["action"], {"obs": obs} if noise is None else {"obs": obs, "noise": noise})[0]


def inputs(batch: int, obs_scale: float = 1.0, noise_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    obs = (rng.normal(size=(batch, SPEC.obs_dim)) * obs_scale).astype(np.float32)
    return obs, (rng.normal(size=(batch, SPEC.act_dim)) * noise_scale).astype(np.float32)


@pytest.mark.parametrize("optimize", [True, False])
def test_fp16_graph_computes_in_float16_behind_a_float32_interface(optimize):
    model = fp16_graph(optimize=optimize)
    check_structure(model)
    io = [*model.graph.input, *model.graph.output]
    assert [v.type.tensor_type.elem_type for v in io] == [TensorProto.FLOAT] * 3
    weights = {t.name: t.data_type for t in model.graph.initializer if len(t.dims) == 2 and min(t.dims) > 1}
    in_float32 = {"w1.obs"} if optimize else set()  # the observation's share of layer 1: see the next test
    assert {name for name, kind in weights.items() if kind == TensorProto.FLOAT} == in_float32
    assert {kind for name, kind in weights.items() if name not in in_float32} == {TensorProto.FLOAT16}
    casts = [n.attribute[0].i for n in model.graph.node if n.op_type == "Cast"]
    assert casts == [TensorProto.FLOAT16, TensorProto.FLOAT16, TensorProto.FLOAT]  # obs, noise in; pre_tanh out


def test_the_optimized_fp16_graph_saturates_the_observations_share_of_layer_1_before_float16():
    """W_s·obs in float16 arithmetic overflows to inf for extreme observations (NaN actions on a GPU, where
    the CPU provider's float32 kernels hide it): the optimized graph computes it in float32, clips it to
    ±65504, then casts."""
    model = fp16_graph(optimize=True)
    consumers = {name: n for n in model.graph.node for name in n.input}
    gemm = consumers["obs"]
    kinds = {t.name: t.data_type for t in model.graph.initializer}
    assert gemm.op_type == "Gemm" and {kinds[gemm.input[1]], kinds[gemm.input[2]]} == {TensorProto.FLOAT}
    clip = consumers[gemm.output[0]]
    assert clip.op_type == "Clip" and consumers[clip.output[0]].op_type == "Cast"
    bound = next(t for t in model.graph.initializer if t.name == clip.input[2])
    assert onnx.numpy_helper.to_array(bound) == np.finfo(np.float16).max


@pytest.mark.parametrize("optimize", [True, False])
def test_fp16_parity_within_its_bounds_at_batch_1_2_7_64_with_large_noise(optimize):
    report = verify_parity(fp16_graph(optimize=optimize), actor_tensors(), SPEC, **FP16_CHECK)
    assert report.passed and report.batch_sizes == (1, 2, 7, 64) and report.pre_tanh_checked
    assert (report.action_atol, report.rtol) == (verify.FP16_ATOL, verify.FP16_RTOL)
    assert 0 < report.max_abs_error_action_half_ranges < verify.FP16_ATOL / 4
    assert report.mean_abs_error_action < verify.FP16_MEAN_ATOL / 4
    assert f"mean within {verify.FP16_MEAN_ATOL:g} × half-range" in report.summary()


@pytest.mark.parametrize("batch", [1, 2, 7, 64])
def test_fp16_actions_match_torch_for_noise_far_past_the_clip(reference, batch):
    obs, noise = inputs(batch, obs_scale=3.0, noise_scale=100.0)
    with torch.no_grad():
        expected = reference(torch.from_numpy(obs), torch.from_numpy(noise), 4, "midpoint").numpy()
    half_range = (np.asarray(SPEC.action_high) - np.asarray(SPEC.action_low)) / 2
    error = np.abs(run(fp16_graph(batch=batch), obs, noise) - expected) / half_range
    assert 0 < error.max() <= verify.FP16_ATOL


def test_fp16_verification_refuses_a_graph_whose_output_bias_is_off():
    """The fp16 bounds are loose for rounding, not for a wrong graph: an output bias off by 0.08 fails them."""
    actor = actor_tensors()
    biased = {**actor, "velocity.net.6.bias": actor["velocity.net.6.bias"] + np.float32(0.08)}
    assert verify_parity(fp16_graph(actor), actor, SPEC, **FP16_CHECK).passed
    with pytest.raises(VerificationError, match=r"does not match.*\(fp16, .*FAILED"):
        verify_parity(fp16_graph(biased), actor, SPEC, **FP16_CHECK)


def test_fp16_export_names_its_dtype_and_keeps_the_contract(checkpoint, tmp_path):
    fp32 = export_checkpoint(checkpoint, tmp_path / "fp32.onnx", ExportConfig(steps=2, samples=10))
    fp16 = export_checkpoint(checkpoint, tmp_path / "fp16.onnx", ExportConfig(steps=2, dtype="fp16", samples=10))
    assert fp16.contract_hash == fp32.contract_hash
    assert fp16.provenance["dtype"] == "fp16" and fp16.provenance["export_config"]["dtype"] == "fp16"
    assert fp16.parity.dtype == "fp16" and fp16.parity.pre_tanh_checked
    assert fp32.parity.max_abs_error_action < fp16.parity.max_abs_error_action < 0.02
    assert "(fp16, midpoint × 2 steps, optimized graph)" in fp16.summary()
    assert "parity vs torch (fp16, " in fp16.summary()
    metadata = {p.key: p.value for p in onnx.load(str(fp16.path)).metadata_props}
    assert json.loads(metadata["flowrl.provenance"])["dtype"] == "fp16"
    text = runner.invoke(app, ["inspect", str(fp16.path)])
    assert text.exit_code == 0, text.output
    assert "exported     dtype fp16, optimized graph" in text.output


def test_fp16_is_refused_below_opset_17_and_a_bad_dtype_is_named(checkpoint, tmp_path):
    with pytest.raises(FlowRLError, match=r"--dtype fp16 needs --opset 17 or newer, got 13"):
        ExportConfig(dtype="fp16", opset=13)
    with pytest.raises(FlowRLError, match=r"unknown dtype 'fp8'; choose one of fp32, int8, fp16"):
        ExportConfig(dtype="fp8")
    out = tmp_path / "p.onnx"
    result = runner.invoke(app, ["export", str(checkpoint), "--dtype", "fp8", "--out", str(out)])
    assert result.exit_code == 2 and "'fp8' is not one of 'fp32', 'int8', 'fp16'" in result.output
    result = runner.invoke(app, ["export", str(checkpoint), "--dtype", "fp16", "--opset", "13", "--out", str(out)])
    assert result.exit_code == 1 and "--dtype fp16 needs --opset 17" in result.output and not out.exists()


def test_an_fp16_report_puts_the_fp32_reference_row_next_to_it(checkpoint, tmp_path):
    out, report = tmp_path / "p.onnx", tmp_path / "r.json"
    args = ["export", str(checkpoint), "--dtype", "fp16", "--steps", "1", "--report", "--out", str(out)]
    result = runner.invoke(app, [*args, "--json", str(report)])
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines() if line.strip().startswith("1 ")]
    assert lines[0][-2:] == [str(out), "(fp16)"] and lines[1][-4:] == ["fp32", "reference", "(not", "written)"]
    (row,) = json.loads(report.read_text())
    assert row["provenance"]["dtype"] == "fp16" and row["fp32_reference"]["dtype"] == "fp32"
    assert row["fp32_reference"]["parity"]["max_abs_error_action"] < row["parity"]["max_abs_error_action"]
