"""The unrolled ODE sampler as one ONNX graph, built node by node from the actor's weights.

Both variants compute π(s, noise) = rescale(tanh(a_N)) with a_N from N fixed solver steps of
the velocity field (see :mod:`flowrl_deploy.train.ode`), with t and dt as constants, no Loop op
and every weight stored once. They differ in structure:

- ``plain`` mirrors the torch module op for op: each velocity evaluation concatenates
  [s, a_t, t] and runs the full first layer.
- ``optimized`` exploits what does not change between evaluations. The first layer splits as
  W·[s, a, t] + b = (W_s·s + b) + W_a·a + t·w_t, so the observation's share is computed once
  per call and t·w_t is a constant per evaluation. The state is carried shifted,
  ã_k = a_k − k·dt·b_out, so that each solver update is a single Gemm with the state as its
  C input (ã + dt·W_out·h); the shift's effect on the next first layer, (k·dt)·W_a·b_out, is
  folded into the same per-evaluation constant, and a_N = ã_N + b_out.

Tried and slower at batch 1 (``bench/infer_latency.py --gap`` shows where the time over the matmul
floor goes: ELU and LayerNorm kernels): the per-evaluation bases h_s + c_i from one Tile, Add and
Split; ELU as Max(x, Exp(Min(x, 0)) − 1) or Relu(x) + Exp(Min(x, 0)) − 1 (onnxruntime's Exp is
vectorized, its Elu is not, but three more nodes cost more). LayerNorm's affine cannot be folded into
the next Linear (an ELU sits between), and onnxruntime's SkipLayerNormalization fusion of the Add
into LayerNorm needs 3-D tensors. Tried, faster in a loop and worse where it counts: the Add taken
into layer 1's Gemm by a state that carries a constant 1, ([W_a | c_i]·[ã, 1] + h_s, the Concat
of constants folded at load) ran 2-3 % faster back to back, but holds 20 copies of W_a in memory
(1.5 MB more at dog-run shapes), and a 200 Hz control loop, whose calls find the cache cold, missed
more deadlines with it: 99 against 62 of 60,000 ticks, six alternating runs of
``bench/serve_control.py``, and 38 against 20 of 30,000 with only the served file swapped
(session 15).

The pre-tanh value a_N is the named tensor ``pre_tanh``, which verification reads as an extra
output.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from flowrl_deploy.checkpoint import ACTOR_PREFIX, ACTOR_TENSORS, check_actor
from flowrl_deploy.contract import ACTION_OUTPUT, NOISE_INPUT, OBS_INPUT
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.export.config import LAYER_NORM_OPSET, MIN_OPSET
from flowrl_deploy.ort import import_onnxruntime
from flowrl_deploy.spec import SOLVERS, PolicySpec

PRE_TANH = "pre_tanh"
MS_DOMAIN = "com.microsoft"
INT8_BLOCK = 128
"""Inputs per quantization block of the int8 layer (MatMulNBits takes 16, 32, 64, 128 or 256)."""
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default


@dataclass(frozen=True)
class VelocityWeights:
    """The velocity field's tensors (float32), named after the layers of v(s, a, t), in the order of
    :data:`~flowrl_deploy.checkpoint.ACTOR_TENSORS`."""

    w1: np.ndarray
    b1: np.ndarray
    ln1_gamma: np.ndarray
    ln1_beta: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    ln2_gamma: np.ndarray
    ln2_beta: np.ndarray
    w_out: np.ndarray
    b_out: np.ndarray

    @classmethod
    def from_actor(
        cls, actor: Mapping[str, np.ndarray], spec: PolicySpec, source: str | os.PathLike[str] = ""
    ) -> VelocityWeights:
        """The tensors of a FlowActor state_dict, checked against the spec by :func:`check_actor` (a refusal
        begins with ``source``, the checkpoint, when given)."""
        check_actor(actor, spec, source)
        return cls(*(np.asarray(actor[ACTOR_PREFIX + key], dtype=np.float32) for key in ACTOR_TENSORS))


@dataclass(frozen=True)
class Evaluation:
    """One velocity evaluation of the unrolled solver."""

    t: np.float32
    """The evaluation time, computed in float32 exactly as the torch solver does."""
    step_size: np.float32
    """How far the result moves the step's start state: dt/2 (midpoint's first half) or dt."""
    shift: float
    """k·dt or k·dt + dt/2: the multiple of b_out accumulated in the state fed to this evaluation."""
    from_step_start: bool
    """True when this evaluation's input state is the step's start state a_k."""


def schedule(steps: int, solver: str) -> list[Evaluation]:
    """The velocity evaluations of ``steps`` fixed steps of ``solver`` from t = 0 to t = 1; ValueError
    for a solver not in :data:`~flowrl_deploy.spec.SOLVERS` (as ``integrate``), never unrolled as Euler."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose {' or '.join(map(repr, SOLVERS))}")
    dt = 1.0 / steps
    half, full = np.float32(0.5 * dt), np.float32(dt)
    evaluations = []
    for k in range(steps):
        t_k = np.float32(k * dt)
        if solver == "midpoint":
            evaluations.append(Evaluation(t_k, half, k * dt, True))
            evaluations.append(Evaluation(np.float32(t_k + half), full, k * dt + 0.5 * dt, False))
        else:
            evaluations.append(Evaluation(t_k, full, k * dt, True))
    return evaluations


class _Graph:
    """Accumulates nodes and initializers with unique names; floating constants are stored as
    ``float_type`` (the sampler's arithmetic: float16 for ``dtype="fp16"``) unless ``exact``."""

    def __init__(self, float_type: type[np.floating] = np.float32) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.float_type = float_type
        self._count = 0

    def const(self, name: str, value: np.ndarray, *, exact: bool = False) -> str:
        """``value`` as an initializer; ``exact`` keeps a float32 one float32 (outside the fp16 part)."""
        value = np.asarray(value)
        if not exact and np.issubdtype(value.dtype, np.floating):
            value = value.astype(self.float_type)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        """A node with one output; no ``output`` name means a unique one."""
        self._count += 1
        output = output or f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=f"{op_type}_{self._count}", **attrs))
        return output


def build_policy_graph(
    weights: VelocityWeights,
    spec: PolicySpec,
    *,
    steps: int,
    solver: str,
    deterministic: bool = False,
    optimize: bool = True,
    batch: int | None = None,
    opset: int = 18,
    dtype: str = "fp32",
) -> onnx.ModelProto:
    """The N-step sampler as an ONNX model: ``obs`` (+ ``noise``) → ``action`` in the spec's bounds.

    ``dtype="int8"`` quantizes the hidden×hidden layer (see :func:`int8_blocks`); the rest stays fp32.

    ``dtype="fp16"`` runs the sampler in float16 behind the same float32 interface (inputs, output
    and contract unchanged), for GPU providers: one Cast of the observation's part (below) and one of
    the clamped noise to float16, every weight, bias and LayerNorm parameter a float16 initializer, the velocity
    evaluations and the solver updates in float16, and one Cast of a_N back to float32 as
    ``pre_tanh``. Chosen over casting the action at the end (the same node count): the Clip of the
    noise, tanh and the rescale stay float32, so ``pre_tanh`` is verified as it is for fp32 and the
    action is not rounded to a float16 step (up to 2.4e-4 × half-range near ±1, 0.03 absolute with
    bounds of ±100). The optimized graph computes the observation's share of layer 1 (W_s·obs + b1,
    once per call) in float32 and clips it to float16's range (±65504) before its Cast: an extreme
    observation saturates layer 1 rather than overflowing to inf in float16 arithmetic (NaN actions).
    The plain graph clips the observation itself before its Cast, so there W·obs can still overflow on
    a provider that computes in float16. Needs ``opset`` >= 17 (ExportConfig refuses less): a
    spelled-out LayerNorm squares its input, which overflows float16 above 256.
    """
    check_opset(opset, runtime=False)  # what onnxruntime runs is checked where the graph is verified
    g = _Graph(np.float16 if dtype == "fp16" else np.float32)
    batch_dim: int | str = batch if batch is not None else "batch"
    docs = tensor_docs(spec, batch)

    def tensor(name: str, width: int) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch_dim, width], docs[name])

    fp32 = g.float_type == np.float32

    def computed(name: str) -> str:  # a float32 tensor in the sampler's float type
        return name if fp32 else g.op("Cast", [name], to=TensorProto.FLOAT16)

    def saturated(name: str) -> str:  # computed, clipped to float16's range first: not cast to inf (NaN actions)
        if fp32:
            return name
        fp16_max = np.float32(np.finfo(np.float16).max)
        bounds = [g.const(f"{name}.min", -fp16_max, exact=True), g.const(f"{name}.max", fp16_max, exact=True)]
        return computed(g.op("Clip", [name, *bounds]))

    inputs = [tensor(OBS_INPUT, spec.obs_dim)] + ([] if deterministic else [tensor(NOISE_INPUT, spec.act_dim)])
    ln1 = (g.const("ln1.gamma", weights.ln1_gamma), g.const("ln1.beta", weights.ln1_beta))
    ln2 = (g.const("ln2.gamma", weights.ln2_gamma), g.const("ln2.beta", weights.ln2_beta))
    b2 = g.const("b2", weights.b2)
    if dtype == "int8":
        w2_q, w2_scales = int8_blocks(weights.w2)
        w2 = (g.const("w2.int8", w2_q), g.const("w2.scales", w2_scales))
        int8_layout = {"in_dim": weights.w2.shape[1], "codes_shape": w2_q.shape}
    else:
        w2 = g.const("w2", weights.w2)
    w_out, b_out = g.const("w_out", weights.w_out), g.const("b_out", weights.b_out)

    if opset >= LAYER_NORM_OPSET:
        layer_norm = _layer_norm
    else:
        layer_norm = functools.partial(_layer_norm_spelled_out, eps=g.const("ln.eps", np.float32(LAYER_NORM_EPS)))

    def hidden(z: str) -> str:
        """LayerNorm → ELU → Linear → LayerNorm → ELU: the part of v shared by both variants."""
        h = g.op("Elu", [layer_norm(g, z, *ln1)], alpha=1.0)
        z2 = _int8_linear(g, h, *w2, b2, **int8_layout) if dtype == "int8" else g.op("Gemm", [h, w2, b2], transB=1)
        return g.op("Elu", [layer_norm(g, z2, *ln2)], alpha=1.0)

    a0 = None
    if not deterministic:
        clip = np.float32(spec.noise_clip)
        bounds = [g.const("clip.min", -clip, exact=True), g.const("clip.max", clip, exact=True)]
        a0 = computed(g.op("Clip", [NOISE_INPUT, *bounds]))
    if optimize:  # the observation's share of layer 1 in float32, then saturated: W·obs cannot overflow float16
        w_s = g.const("w1.obs", weights.w1[:, : spec.obs_dim], exact=True)
        h_s = saturated(g.op("Gemm", [OBS_INPUT, w_s, g.const("b1", weights.b1, exact=True)], transB=1))
        build = functools.partial(_optimized_sampler, h_s=h_s)
    else:
        build = functools.partial(_plain_sampler, obs=saturated(OBS_INPUT))
    a_n = build(g, weights, spec, schedule(steps, solver), a0, hidden, w_out, b_out, PRE_TANH if fp32 else None)
    if not fp32:
        a_n = g.op("Cast", [a_n], PRE_TANH, to=TensorProto.FLOAT)

    low = np.asarray(spec.action_low, dtype=np.float32)
    high = np.asarray(spec.action_high, dtype=np.float32)
    if np.all(low == -1) and np.all(high == 1):  # tanh·1 + 0 is tanh exactly: 2 nodes (~1 %) saved at batch 1
        g.op("Tanh", [a_n], ACTION_OUTPUT)
    else:
        scale = g.const("action.scale", (high - low) / 2, exact=True)
        bias = g.const("action.bias", (high + low) / 2, exact=True)
        g.op("Add", [g.op("Mul", [g.op("Tanh", [a_n]), scale]), bias], ACTION_OUTPUT)

    variant = "optimized" if optimize else "plain"
    graph = helper.make_graph(
        g.nodes,
        f"flowrl_policy_{variant}_{solver}_{steps}",
        inputs,
        [tensor(ACTION_OUTPUT, spec.act_dim)],
        g.initializers,
    )
    return _stamped(graph, opset, int8=dtype == "int8")


def tensor_docs(spec: PolicySpec, batch: int | None) -> dict[str, str]:
    """The doc strings of the graph's inputs and output, for a caller without flowrl-deploy (Netron shows them)."""
    b = "B" if batch is None else batch
    layout = ", ".join(f"{name}[{size}]" for name, size in spec.obs_layout) or "layout not recorded"
    pairs = [f"[{lo:g}, {hi:g}]" for lo, hi in zip(spec.action_low, spec.action_high, strict=True)]
    named = zip(spec.action_names, pairs, strict=True) if spec.action_names else ()
    bounds = ", ".join(f"{n} {p}" for n, p in named) or ", ".join(pairs)
    clip = f"{spec.noise_clip:g}"
    return {
        OBS_INPUT: f"[{b}, {spec.obs_dim}] float32: the observation in obs_layout order ({layout}), not "
        "normalized; the graph checks neither its shape nor for NaN or Inf: the caller must",
        NOISE_INPUT: f"[{b}, {spec.act_dim}] float32: standard normal draws N(0, I), one row per observation; "
        f"clamped to [-{clip}, {clip}] inside, the sampler's start a0 at t = 0",
        ACTION_OUTPUT: f"[{b}, {spec.act_dim}] float32: the action, already rescaled to the action bounds "
        f"({bounds}); tanh and the rescaling are inside",
    }


def _layer_norm(g: _Graph, x: str, gamma: str, beta: str) -> str:
    """torch.nn.LayerNorm over the last axis as one LayerNormalization node (opset >= 17)."""
    return g.op("LayerNormalization", [x, gamma, beta], epsilon=LAYER_NORM_EPS)


def _layer_norm_spelled_out(g: _Graph, x: str, gamma: str, beta: str, *, eps: str) -> str:
    """:func:`_layer_norm` in ops of opset 13 (ReduceMean takes its axes as an attribute up to opset 17):
    (x − mean) / sqrt(var + eps) · gamma + beta, the biased variance, as torch computes it; ``eps``
    names the constant LAYER_NORM_EPS."""
    centered = g.op("Sub", [x, g.op("ReduceMean", [x], axes=[-1], keepdims=1)])
    variance = g.op("ReduceMean", [g.op("Mul", [centered, centered])], axes=[-1], keepdims=1)
    normalized = g.op("Div", [centered, g.op("Sqrt", [g.op("Add", [variance, eps])])])
    return g.op("Add", [g.op("Mul", [normalized, gamma]), beta])


def _stamped(graph: onnx.GraphProto, opset: int, *, int8: bool = False) -> onnx.ModelProto:
    """``graph`` as a model of ``opset`` (+ com.microsoft for the int8 layer), with the oldest IR
    version that opset allows."""
    opsets = [helper.make_opsetid("", opset)]
    ir_version = helper.find_min_ir_version_for(opsets)
    if int8:
        opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
    return helper.make_model(graph, opset_imports=opsets, ir_version=ir_version)


@functools.cache
def newest_opset() -> int:
    """The newest opset an exported graph may be stamped with: the newest that this onnx knows and the
    installed onnxruntime loads. onnxruntime refuses a newer IR version than its own and an opset
    still under development, though onnx may know both, and has no call that names its newest
    (microsoft/onnxruntime#14932): opsets are tried newest first on a one-node model stamped as an
    export is (a few milliseconds). If it loads none, onnx's newest."""
    ort = import_onnxruntime()  # a base dependency

    newest = onnx.defs.onnx_opset_version()
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the refusals are the answer, not errors to log
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in ("x", "y")]
    probe = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "opset_probe", io[:1], io[1:])
    for opset in range(newest, MIN_OPSET - 1, -1):
        try:
            model = _stamped(probe, opset).SerializeToString()
            ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception:  # onnxruntime's own untyped error: it does not run this opset
            continue
        return opset
    return newest


def check_opset(opset: int, *, runtime: bool = True) -> None:
    """Raise :class:`FlowRLError` for an opset newer than this onnx knows or, with ``runtime`` (the
    graph is verified here), than the installed onnxruntime runs, naming the range that works
    (before any work: onnxruntime would refuse the graph only at its verification). Without
    ``runtime`` (--no-verify) a graph may target a newer onnxruntime on the deployment machine."""
    newest = newest_opset() if runtime else onnx.defs.onnx_opset_version()
    if opset <= newest:
        return
    if runtime:
        ort = import_onnxruntime()
        libraries = f"this onnx ({onnx.__version__}) and onnxruntime ({ort.__version__}) both support"
    else:
        libraries = f"this onnx ({onnx.__version__}) knows"
    raise FlowRLError(f"--opset {opset} is newer than {libraries}; use {MIN_OPSET}..{newest}")


def _plain_sampler(
    g: _Graph,
    weights: VelocityWeights,
    spec: PolicySpec,
    evaluations: list[Evaluation],
    a0: str | None,
    hidden: Callable[[str], str],
    w_out: str,
    b_out: str,
    pre_tanh: str | None,
    *,
    obs: str,
) -> str:
    """v(concat[s, a, t]) at every evaluation, updates a ← a_k + step·v, as the torch solver does.
    ``obs`` is the observation in the sampler's float type. ``pre_tanh`` names the result (None: the
    caller casts it, named, to float32); so in the next one."""
    w1, b1 = g.const("w1", weights.w1), g.const("b1", weights.b1)
    one = g.const("one", np.array([1]))
    batch = g.op("Slice", [g.op("Shape", [OBS_INPUT]), g.const("zero", np.array([0])), one])
    if a0 is None:
        a_shape = g.op("Concat", [batch, g.const("act_dim", np.array([spec.act_dim]))], axis=0)
        a0 = g.op("Expand", [g.const("a0.zero", np.zeros((1, spec.act_dim), np.float32)), a_shape])
    t_shape = g.op("Concat", [batch, one], axis=0)
    a_k = a_t = a0
    for i, ev in enumerate(evaluations):
        t_col = g.op("Expand", [g.const(f"t.{i}", np.full((1, 1), ev.t, np.float32)), t_shape])
        z = g.op("Gemm", [g.op("Concat", [obs, a_t, t_col], axis=1), w1, b1], transB=1)
        v = g.op("Gemm", [hidden(z), w_out, b_out], transB=1)
        if ev.from_step_start:
            a_k = a_t
        a_t = g.op("Add", [a_k, g.op("Mul", [v, g.const(f"step.{i}", ev.step_size)])])
    return a_t if pre_tanh is None else g.op("Identity", [a_t], pre_tanh)


def _optimized_sampler(
    g: _Graph,
    weights: VelocityWeights,
    spec: PolicySpec,
    evaluations: list[Evaluation],
    a0: str | None,
    hidden: Callable[[str], str],
    w_out: str,
    b_out: str,
    pre_tanh: str | None,
    *,
    h_s: str,
) -> str:
    """One Gemm per solver update (see module doc); ``h_s`` is the observation's share of layer 1,
    W_s·obs + b1, computed once per call by the caller."""
    o = spec.obs_dim
    w_a, w_t = weights.w1[:, o : o + spec.act_dim], weights.w1[:, -1]
    w_a_name = ""  # stored at its first use: a deterministic one-step Euler graph has none
    w_a_b_out = w_a.astype(np.float64) @ weights.b_out.astype(np.float64)
    a_k = a_t = a0  # shifted states ã; None means exactly zero (the deterministic a0)
    for i, ev in enumerate(evaluations):
        c = (float(ev.t) * w_t.astype(np.float64) + ev.shift * w_a_b_out).astype(np.float32)
        c_name = g.const(f"layer1.const.{i}", c)
        if a_t is None:
            z = g.op("Add", [h_s, c_name])
        else:
            w_a_name = w_a_name or g.const("w1.action", w_a)
            z = g.op("Add", [g.op("Gemm", [a_t, w_a_name, c_name], transB=1), h_s])
        h = hidden(z)
        if ev.from_step_start:
            a_k = a_t
        start = [] if a_k is None else [a_k]
        a_t = g.op("Gemm", [h, w_out, *start], transB=1, alpha=float(ev.step_size), beta=1.0)
    return g.op("Add", [a_t, b_out], pre_tanh)


def int8_blocks(w: np.ndarray, block: int = INT8_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """``w`` [out, in] as MatMulNBits' 8-bit weights: symmetric per block of ``block`` inputs.

    Returns the codes [out, blocks, block] (uint8, zero point 128; the last block zero-padded)
    and the float32 scales [out, blocks], so that w[o, i] ≈ (code − 128) · scale[o, i // block].
    """
    out_dim, in_dim = w.shape
    padded = np.pad(w, ((0, 0), (0, -in_dim % block))).reshape(out_dim, -1, block)
    scale = np.maximum(np.abs(padded).max(axis=2), np.finfo(np.float32).tiny) / 127.0
    codes = np.clip(np.round(padded / scale[..., None]), -127, 127) + 128
    return codes.astype(np.uint8), scale.astype(np.float32)


def _int8_linear(
    g: _Graph, x: str, w_q: str, w_scales: str, bias: str, *, in_dim: int, codes_shape: tuple[int, int, int]
) -> str:
    """x·Wᵀ + b as one onnxruntime MatMulNBits node (com.microsoft): 8-bit weights streamed at
    a quarter of fp32's bytes, x quantized per block to int8 for the product (accuracy level 4).
    The output width and block size are read off the codes of :func:`int8_blocks`.
    """
    out_dim, _, block = codes_shape
    return g.op(
        "MatMulNBits",
        [x, w_q, w_scales, "", "", bias],
        domain=MS_DOMAIN,
        K=in_dim,
        N=out_dim,
        bits=8,
        block_size=block,
        accuracy_level=4,
    )
