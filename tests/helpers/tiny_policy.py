"""Tiny policy graphs carrying a real policy contract, built with onnx.helper (no exporter needed)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from flowrl_deploy.contract import PolicyContract, contract_to_metadata

OBS_DIM, ACT_DIM = 3, 2


def tiny_contract(deterministic: bool = False, **overrides) -> PolicyContract:
    contract = PolicyContract(
        obs_dim=OBS_DIM,
        act_dim=ACT_DIM,
        action_low=(-1.0, -2.0),
        action_high=(1.0, 2.0),
        obs_layout=(("position", 2), ("velocity", 1)),
        action_names=("left", "right"),
        control_period_s=0.02,
        deterministic=deterministic,
        input_names=("obs",) if deterministic else ("obs", "noise"),
    )
    return replace(contract, **overrides)


def write_policy(path: Path, *, scale: float = 1.0, deterministic: bool = False, **overrides) -> Path:
    """action = low + (tanh(scale·(obs·W + clip(noise, -1, 1)·U)) + 1)/2 · (high - low)."""
    contract = tiny_contract(deterministic, **overrides)
    obs_dim, act_dim = contract.obs_dim, contract.act_dim
    rng = np.random.default_rng(7)
    low = np.asarray(contract.action_low, np.float32)
    high = np.asarray(contract.action_high, np.float32)
    inits = [
        numpy_helper.from_array(rng.standard_normal((obs_dim, act_dim)).astype(np.float32) * scale, "W"),
        numpy_helper.from_array(rng.standard_normal((act_dim, act_dim)).astype(np.float32) * scale, "U"),
        numpy_helper.from_array(np.float32(-1.0), "lo_clip"),
        numpy_helper.from_array(np.float32(1.0), "hi_clip"),
        numpy_helper.from_array((high - low) / 2, "half_range"),
        numpy_helper.from_array((high + low) / 2, "center"),
    ]
    nodes = [helper.make_node("MatMul", ["obs", "W"], ["h"])]
    inputs = [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["B", obs_dim])]
    if not deterministic:
        inputs.append(helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["B", act_dim]))
        nodes += [
            helper.make_node("Clip", ["noise", "lo_clip", "hi_clip"], ["a0"]),
            helper.make_node("MatMul", ["a0", "U"], ["n"]),
            helper.make_node("Add", ["h", "n"], ["z"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["h"], ["z"]))
    nodes += [
        helper.make_node("Tanh", ["z"], ["t"]),
        helper.make_node("Mul", ["t", "half_range"], ["s"]),
        helper.make_node("Add", ["s", "center"], ["action"]),
    ]
    return save_policy(path, contract, "tiny_policy", nodes, inputs, inits)


def save_policy(
    path: Path,
    contract: PolicyContract,
    name: str,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    inits: list[onnx.TensorProto],
) -> Path:
    """The graph ``name`` of ``nodes`` (output ``action``, [B, act_dim]) checked and saved at ``path``,
    opset 17 and IR version 8, with ``contract`` in its metadata."""
    outputs = [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["B", contract.act_dim])]
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, contract_to_metadata(contract, {"source": "test"}))
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def documented_noise(seed: int) -> np.random.Generator:
    """A session's noise as docs/export.md documents it (one ``standard_normal((B, act_dim), float32)``
    block per request), written out here rather than taken from flowrl_deploy.noise."""
    return np.random.Generator(np.random.PCG64(seed))
