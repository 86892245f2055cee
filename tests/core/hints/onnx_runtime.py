"""Typed code reading a local policy's graph: its tensor names, and a session of its own."""

from __future__ import annotations

from flowrl_deploy.runtime import OnnxPolicy, make_session


def output_of(policy: OnnxPolicy) -> str:
    return policy.output_name


def inputs_of(policy: OnnxPolicy) -> list[str]:
    return [name.upper() for name in policy.input_names]


def outputs() -> list[str]:
    return [output.name for output in make_session("policy.onnx").get_outputs()]
