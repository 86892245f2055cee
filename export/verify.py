"""Verification of an exported policy graph, run on every export: fail loudly, never ship a wrong file.

1. Structure: ``onnx.checker`` full check and strict shape inference; no Loop, If or Scan op.
2. Parity: onnxruntime against the torch FlowActor sampler (same noise, steps and solver) on
   random (obs, noise) pairs at several batch sizes (at least ``samples`` at each, in whole
   batches), large noise and large observations included,
   on the action and on the pre-tanh value.
3. Determinism: the same input twice gives bit-identical actions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from flowrl_deploy.contract import NOISE_INPUT, OBS_INPUT
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.export.graph import PRE_TANH
from flowrl_deploy.ort import make_session
from flowrl_deploy.spec import PolicySpec

BATCH_SIZES = (1, 2, 7, 64)
FP32_ATOL, FP32_RTOL = 1e-5, 1e-4
"""fp32 parity: |Δ| <= atol + rtol·|reference|, on pre-tanh as is and on the action with atol in
units of each action's half-range (float32 rounding of tanh is scaled by it: with bounds of ±100 a
correct graph's actions near 0 differ by more than 1e-5; for ±1 bounds this is plain atol)."""
INT8_ACTION_ATOL = 0.25
INT8_MEAN_ATOL = 0.02
"""int8 bounds on the action error as fractions of each action's half-range: every element within
INT8_ACTION_ATOL, and their mean within INT8_MEAN_ATOL. Rounding a trained N = 1 policy's weights
alone moves single actions by up to about 0.07 (measured on dmc:cartpole-swingup; 0.1-0.2 with its
input rounded too) while the mean stays near 0.01 and the return holds; a broken graph moves the
mean. Pre-tanh is only reported."""
FP16_ATOL, FP16_RTOL = 0.02, 1e-2
FP16_MEAN_ATOL = 0.002
"""fp16 bounds: |Δ| <= FP16_ATOL + FP16_RTOL·|reference| on the action (atol in half-ranges, as
FP32_ATOL) and on pre-tanh, and the action's mean error within FP16_MEAN_ATOL × half-range. Measured
at the verification's inputs (N = 1 and 10, plain and optimized, untrained weights of the test
policy and of width-512 dog-run shapes): onnxruntime's CPU provider, which rounds the weights and
inputs to float16 but computes its float16 nodes in float32, gives up to 0.0018 × half-range (mean
0.0002, pre-tanh 0.0022); true float16 arithmetic, as a GPU provider runs it (the torch sampler in
half precision), up to 0.0024 (mean 0.0003, pre-tanh 0.0068 at N = 10). The bounds leave about 8×
that for trained weights; a graph whose output bias is off by 0.08 fails them."""
OBS_SCALES = (1.0, 1.0, 10.0, 1000.0)
NOISE_SCALES = (1.0, 1.0, 5.0)
_UNROLLED_ONLY = ("Loop", "If", "Scan")


def tolerances(dtype: str) -> tuple[float, float, float | None, bool]:
    """``dtype``'s parity bounds: (action atol in half-ranges, rtol, bound on the mean action error in
    half-ranges or None, whether pre-tanh is checked (with the same atol and rtol) or only reported)."""
    if dtype == "int8":
        return INT8_ACTION_ATOL, FP32_RTOL, INT8_MEAN_ATOL, False
    if dtype == "fp16":
        return FP16_ATOL, FP16_RTOL, FP16_MEAN_ATOL, True
    return FP32_ATOL, FP32_RTOL, None, True


class VerificationError(FlowRLError):
    """An exported graph failed a structural, parity or determinism check."""


@dataclass(frozen=True)
class ParityReport:
    """Errors of onnxruntime against the torch sampler over every verified input: maxima, and the
    action's mean. Action errors count in each action's half-range, as the tolerances do, except
    ``max_abs_error_action``, which is absolute (in the action's own units)."""

    dtype: str
    batch_sizes: tuple[int, ...]
    pairs_per_batch_size: tuple[int, ...]
    """(obs, noise) pairs verified at each of ``batch_sizes``: whole batches, so ``samples`` rounded up
    to a multiple of the batch size (100 gives 100, 100, 105 and 128 at batch sizes 1, 2, 7 and 64)."""
    action_atol: float
    rtol: float
    max_abs_error_action: float
    """Absolute: the largest |Δaction| in the action's own units."""
    max_abs_error_action_half_ranges: float
    """The largest |Δaction| as a fraction of its action's half-range (the unit of ``action_atol``)."""
    mean_abs_error_action: float
    """Mean over every element, as a fraction of each action's half-range."""
    max_abs_error_pre_tanh: float
    pre_tanh_checked: bool
    bit_identical_repeat: bool
    passed: bool

    def summary(self) -> str:
        scale = " × half-range"
        tolerance = f"atol {self.action_atol:g}{scale}, rtol {self.rtol:g}"
        if (mean_atol := tolerances(self.dtype)[2]) is not None:
            tolerance += f", mean within {mean_atol:g}{scale}"
        pre_tanh = "" if self.pre_tanh_checked else " (reported only)"
        return (
            f"parity vs torch ({self.dtype}, batch sizes {', '.join(map(str, self.batch_sizes))} "
            f"with {', '.join(map(str, self.pairs_per_batch_size))} pairs, {tolerance}): "
            f"max |Δaction| = {self.max_abs_error_action_half_ranges:.3g}{scale} "
            f"({self.max_abs_error_action:.3g} absolute), mean {self.mean_abs_error_action:.3g}{scale}, "
            f"max |Δpre_tanh| = {self.max_abs_error_pre_tanh:.3g}{pre_tanh}; "
            f"repeat bit-identical: {'yes' if self.bit_identical_repeat else 'NO'}; "
            f"{'PASSED' if self.passed else 'FAILED'}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_structure(model: onnx.ModelProto) -> None:
    """onnx.checker (full) and strict shape inference; the sampler must be unrolled."""
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise VerificationError(f"the exported graph is not valid ONNX: {exc}") from exc
    loops = sorted({n.op_type for n in model.graph.node if n.op_type in _UNROLLED_ONLY})
    if loops:
        raise VerificationError(f"the exported graph holds control flow ({', '.join(loops)}); it must be unrolled")


def with_pre_tanh_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs its ``pre_tanh`` tensor."""
    debug = onnx.ModelProto()
    debug.CopyFrom(model)
    action = debug.graph.output[0].type.tensor_type.shape.dim
    dims = [d.dim_param or d.dim_value for d in action]
    debug.graph.output.append(helper.make_tensor_value_info(PRE_TANH, TensorProto.FLOAT, dims))
    return debug


def reference_actor(actor: Mapping[str, np.ndarray], spec: PolicySpec):
    """An eval-mode CPU float32 FlowActor holding the checkpoint's weights: the torch sampler."""
    from flowrl_deploy.train.actor import FlowActor

    return FlowActor.from_numpy(spec, actor).eval()


def verification_inputs(
    spec: PolicySpec, batch: int, count: int, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """At least ``count`` (obs, noise) pairs, as ceil(count / batch) whole batches of ``batch`` rows;
    rows scaled up to 1000× (obs) and 5× (noise)."""
    calls = []
    for _ in range(math.ceil(count / batch)):
        obs = rng.normal(size=(batch, spec.obs_dim)) * rng.choice(OBS_SCALES, size=(batch, 1))
        noise = rng.normal(size=(batch, spec.act_dim)) * rng.choice(NOISE_SCALES, size=(batch, 1))
        calls.append((obs.astype(np.float32), noise.astype(np.float32)))
    return calls


def verify_parity(
    model: onnx.ModelProto,
    actor: Mapping[str, np.ndarray],
    spec: PolicySpec,
    *,
    steps: int,
    solver: str,
    deterministic: bool,
    batch: int | None,
    dtype: str = "fp32",
    samples: int = 100,
    seed: int = 0,
) -> ParityReport:
    """Compare onnxruntime with the torch sampler; raise :class:`VerificationError` on any miss."""
    import torch

    reference = reference_actor(actor, spec)
    session = make_session(with_pre_tanh_output(model).SerializeToString(), providers=["CPUExecutionProvider"])
    half_range = (np.asarray(spec.action_high) - np.asarray(spec.action_low)) / 2
    action_atol, rtol, mean_atol, pre_tanh_checked = tolerances(dtype)
    rng = np.random.default_rng(seed)
    batch_sizes = (batch,) if batch is not None else BATCH_SIZES
    err_action = err_action_half_ranges = err_pre_tanh = 0.0  # action errors in half-ranges: see FP32_ATOL
    err_sum, err_count = 0.0, 0
    within, repeat_identical = True, True
    pairs = []
    non_finite = {"onnxruntime": 0, "torch": 0}  # rows with a NaN or infinite action (max() would skip a NaN)
    for size in batch_sizes:
        inputs = verification_inputs(spec, size, samples, rng)
        pairs.append(len(inputs) * size)
        for i, (obs, noise) in enumerate(inputs):
            if deterministic:
                noise = np.zeros_like(noise)
            feeds = {OBS_INPUT: obs} if deterministic else {OBS_INPUT: obs, NOISE_INPUT: noise}
            action, pre_tanh = session.run(None, feeds)
            with torch.no_grad():
                ref_pre = reference.pre_tanh(torch.from_numpy(obs), torch.from_numpy(noise), steps, solver)
                ref_action = reference.squash(ref_pre).numpy()
                ref_pre = ref_pre.numpy()
            non_finite["onnxruntime"] += int((~np.isfinite(action)).any(axis=-1).sum())
            non_finite["torch"] += int((~np.isfinite(ref_action)).any(axis=-1).sum())
            diff = np.abs(action - ref_action)
            diff_half_ranges = diff / half_range
            err_action = max(err_action, float(diff.max()))
            err_action_half_ranges = max(err_action_half_ranges, float(diff_half_ranges.max()))
            err_sum, err_count = err_sum + float(diff_half_ranges.sum()), err_count + diff.size
            err_pre_tanh = max(err_pre_tanh, float(np.abs(pre_tanh - ref_pre).max()))
            within &= bool(np.all(diff <= action_atol * half_range + rtol * np.abs(ref_action)))
            if pre_tanh_checked:
                within &= bool(np.allclose(pre_tanh, ref_pre, atol=action_atol, rtol=rtol))
            if i == 0:
                repeat_identical &= bool(np.array_equal(session.run(None, feeds)[0], action))
    if any(non_finite.values()):
        counts = ", ".join(f"{name} {count}" for name, count in non_finite.items())
        raise VerificationError(
            f"the policy's actions are NaN or infinite for {max(non_finite.values())} of {sum(pairs)} verification "
            f"inputs ({counts}): its weights are finite but overflow float32 (training diverged?)"
        )
    err_mean = err_sum / err_count
    if mean_atol is not None:
        within &= err_mean <= mean_atol
    report = ParityReport(
        dtype=dtype,
        batch_sizes=tuple(batch_sizes),
        pairs_per_batch_size=tuple(pairs),
        action_atol=action_atol,
        rtol=rtol,
        max_abs_error_action=err_action,
        max_abs_error_action_half_ranges=err_action_half_ranges,
        mean_abs_error_action=err_mean,
        max_abs_error_pre_tanh=err_pre_tanh,
        pre_tanh_checked=pre_tanh_checked,
        bit_identical_repeat=repeat_identical,
        passed=within and repeat_identical,
    )
    if not report.passed:
        failure = "does not match the torch sampler" if not within else "gives different actions for the same input"
        raise VerificationError(f"the exported graph {failure}: {report.summary()}")
    return report
