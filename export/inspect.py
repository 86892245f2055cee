"""What `flowrl inspect` shows of a policy file: contract, hashes, provenance, I/O, opsets and ops.

The file is parsed with the protobuf runtime of the base install against the few messages of
onnx.proto that :mod:`flowrl_deploy.onnxfile` lists, not loaded into onnxruntime: a robot may lack the
onnx package, and a file for a newer runtime (a higher IR version, an int8 op) is still readable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flowrl_deploy.checkpoint import file_sha256
from flowrl_deploy.contract import contract_from_metadata
from flowrl_deploy.errors import FlowRLError, SpecError, counted
from flowrl_deploy.onnxfile import parse_model, read_policy_file
from flowrl_deploy.policy import check_graph_matches_contract

_ELEM_TYPES = {
    1: "float", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string",
    9: "bool", 10: "float16", 11: "double", 12: "uint32", 13: "uint64", 16: "bfloat16",
}  # fmt: skip
"""TensorProto.DataType names, as onnxruntime writes tensor types ("tensor(float)")."""
DEFAULT_DOMAIN = "ai.onnx"
"""The name of the standard operator domain, which a file writes as ""."""
RUNTIME_NEEDS = {
    ("ai.onnx", "LayerNormalization"): "opset >= 17; TensorRT >= 8.6",
    ("com.microsoft", "MatMulNBits"): "onnxruntime >= 1.22; not TensorRT",
}
"""What a runtime must offer for an op an export may hold (ops of other domains than ai.onnx that are
not listed here are called onnxruntime's own)."""


def read_model(path: Path) -> Any:
    """The file's ModelProto (the fields of :data:`~flowrl_deploy.onnxfile.ONNX_MESSAGES`); a file that
    is no ONNX model is refused."""
    return parse_model(read_policy_file(path), path)


def _tensors(values: Iterable[Any]) -> list[dict[str, Any]]:
    """Graph inputs or outputs as onnxruntime describes them: a dimension is a size, a name or None."""

    def dim(d: Any) -> int | str | None:
        return d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param") else None

    return [
        {
            "name": v.name,
            "shape": [dim(d) for d in v.type.tensor_type.shape.dim],
            "type": f"tensor({_ELEM_TYPES.get(v.type.tensor_type.elem_type, v.type.tensor_type.elem_type)})",
        }
        for v in values
    ]


def inspect_policy(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The policy file's contract, contract hash, file sha256, provenance, tensor shapes, IR version,
    opsets, ops by domain and what those ops need of a runtime (a path that is no ONNX file is
    refused as :func:`~flowrl_deploy.onnxfile.check_policy_file` says)."""
    path = Path(path)
    model = read_model(path)
    try:
        contract, provenance = contract_from_metadata({p.key: p.value for p in model.metadata_props})
    except SpecError as exc:
        raise FlowRLError(f"{path}: {exc}") from exc
    inputs, outputs = _tensors(model.graph.input), _tensors(model.graph.output)
    check_graph_matches_contract(
        contract, [(t["name"], t["shape"]) for t in inputs], [(t["name"], t["shape"]) for t in outputs], str(path)
    )
    ops: dict[str, set[str]] = {}
    for node in model.graph.node:
        ops.setdefault(node.domain or DEFAULT_DOMAIN, set()).add(node.op_type)
    needs = [
        f"{d} {op} ({RUNTIME_NEEDS.get((d, op), 'not standard ONNX: an onnxruntime op')})"
        for d, names in sorted(ops.items())
        for op in sorted(names)
        if (d, op) in RUNTIME_NEEDS or d != DEFAULT_DOMAIN
    ]
    return {
        "path": str(path),
        "sha256": file_sha256(path),
        "size_bytes": path.stat().st_size,
        "contract_hash": contract.hash(),
        "contract": contract.to_dict(),
        "inputs": inputs,
        "outputs": outputs,
        "ir_version": model.ir_version,
        "opsets": {o.domain or DEFAULT_DOMAIN: o.version for o in model.opset_import},
        "ops": {d: sorted(names) for d, names in sorted(ops.items())},
        "needs": needs,
        "provenance": provenance,
    }


def contract_lines(c: dict[str, Any]) -> list[str]:
    """The lines of :func:`format_inspection` that render the contract ``c`` (a contract's ``to_dict()``):
    what a controller must agree on, also for a served policy (``flowrl inspect --server``)."""
    layout = ", ".join(f"{name}[{size}]" for name, size in c["obs_layout"]) or "(not recorded)"
    pairs = [f"[{lo:g}, {hi:g}]" for lo, hi in zip(c["action_low"], c["action_high"], strict=True)]
    bounds = f"{pairs[0]} for every action" if len(set(pairs)) == 1 else ", ".join(pairs)
    return [
        f"env          {c['env_id'] or '(not recorded)'}, control period {c['control_period_s']:g} s",
        f"observation  {counted(c['obs_dim'], 'value')}: {layout}; normalization: {c['obs_normalization']}",
        f"action       {counted(c['act_dim'], 'value')}: {', '.join(c['action_names']) or '(names not recorded)'}",
        f"bounds       {bounds}; output already rescaled: {'yes' if c['action_rescaled'] else 'no'}",
        f"sampler      {c['solver']} × {counted(c['flow_steps'], 'step')}, t schedule {c['t_schedule']}, "
        f"{'deterministic' if c['deterministic'] else 'stochastic'}",
        f"noise        {c['noise_convention']}",
    ]


def format_inspection(info: dict[str, Any]) -> str:
    """A human-readable rendering of :func:`inspect_policy`'s result."""
    p = info["provenance"]

    def shapes(tensors: Iterable[dict[str, Any]]) -> str:
        return ", ".join(f"{t['name']} {t['shape']} {t['type']}" for t in tensors)

    config, verification, versions = (
        value if isinstance(value, dict) else {}  # provenance is not hashed: show what is there, as it is
        for value in (p.get("export_config"), p.get("verification"), p.get("versions"))
    )
    lines = [
        f"policy       {info['path']} ({info['size_bytes']} bytes)",
        f"sha256       {info['sha256']}",
        f"contract     {info['contract_hash']}",
        f"inputs       {shapes(info['inputs'])}",
        f"outputs      {shapes(info['outputs'])}",
        *contract_lines(info["contract"]),
        f"source       {p.get('source_checkpoint', '?')} (model.safetensors sha256 {p.get('source_sha256', '?')})",
        f"opset        {', '.join(f'{d} {v}' for d, v in info['opsets'].items())} (IR version {info['ir_version']})",
        *(
            f"{'needs' if i == 0 else '':13}{need}"
            for i, need in enumerate(info["needs"] or ["standard ONNX ops only"])
        ),
        f"exported     dtype {p.get('dtype', '?')}, {'optimized' if config.get('optimize') else 'plain'} graph, "
        + (
            f"with {', '.join(f'{k} {v}' for k, v in sorted(versions.items()))}"
            if versions
            else "library versions not recorded"
        ),
    ]
    errors = [verification.get(key) for key in ("max_abs_error_action", "max_abs_error_pre_tanh")]
    if all(isinstance(e, int | float) for e in errors):
        lines.append(
            f"verified     max |Δaction| {errors[0]:.2e} (absolute), max |Δpre_tanh| {errors[1]:.2e} vs torch "
            f"({'passed' if verification.get('passed') else 'FAILED'})"
        )
    elif verification:
        lines.append(f"verified     {json.dumps(verification, sort_keys=True)}")
    else:
        lines.append("verified     no (exported with --no-verify)")
    lines.append(f"config       {json.dumps(config, sort_keys=True)}")
    return "\n".join(lines)
