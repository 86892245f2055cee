"""What `flowrl inspect` shows of a policy file: contract, hashes, provenance, I/O. Needs only onnxruntime."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flowrl_deploy.export.exporter import file_sha256
from flowrl_deploy.runtime import OnnxPolicy


def inspect_policy(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The policy file's contract, contract hash, file sha256, provenance and tensor shapes (a path
    that is no ONNX file is refused as :func:`~flowrl_deploy.runtime.check_policy_file` says)."""
    path = Path(path)
    policy = OnnxPolicy(path, providers=["CPUExecutionProvider"])

    def io(tensors) -> list[dict[str, Any]]:
        return [{"name": t.name, "shape": list(t.shape), "type": t.type} for t in tensors]

    return {
        "path": str(path),
        "sha256": file_sha256(path),
        "size_bytes": path.stat().st_size,
        "contract_hash": policy.contract_hash,
        "contract": policy.contract.to_dict(),
        "inputs": io(policy.session.get_inputs()),
        "outputs": io(policy.session.get_outputs()),
        "provenance": policy.provenance,
    }


def format_inspection(info: dict[str, Any]) -> str:
    """A human-readable rendering of :func:`inspect_policy`'s result."""
    c, p = info["contract"], info["provenance"]

    def shapes(tensors) -> str:
        return ", ".join(f"{t['name']} {t['shape']} {t['type']}" for t in tensors)

    layout = ", ".join(f"{name}[{size}]" for name, size in c["obs_layout"]) or "(not recorded)"
    pairs = [f"[{lo:g}, {hi:g}]" for lo, hi in zip(c["action_low"], c["action_high"], strict=True)]
    bounds = f"{pairs[0]} for every action" if len(set(pairs)) == 1 else ", ".join(pairs)
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
        f"env          {c['env_id'] or '(not recorded)'}, control period {c['control_period_s']:g} s",
        f"observation  {c['obs_dim']} values: {layout}; normalization: {c['obs_normalization']}",
        f"action       {c['act_dim']} values: {', '.join(c['action_names']) or '(names not recorded)'}",
        f"bounds       {bounds}; output already rescaled: {'yes' if c['action_rescaled'] else 'no'}",
        f"sampler      {c['solver']} × {c['flow_steps']} steps, t schedule {c['t_schedule']}, "
        f"{'deterministic' if c['deterministic'] else 'stochastic'}",
        f"noise        {c['noise_convention']}",
        f"source       {p.get('source_checkpoint', '?')} (model.safetensors sha256 {p.get('source_sha256', '?')})",
        f"exported     dtype {p.get('dtype', '?')}, opset {p.get('opset', '?')}, "
        f"{'optimized' if config.get('optimize') else 'plain'} graph, with "
        + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())),
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
