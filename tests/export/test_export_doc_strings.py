"""The file documents its tensors for a reader without flowrl-deploy (Netron, a C++ caller)."""

from __future__ import annotations

import onnx
import pytest

from flowrl_deploy.export import ExportConfig, export_checkpoint


@pytest.mark.parametrize("deterministic", [False, True])
def test_inputs_outputs_and_model_carry_doc_strings(checkpoint, tmp_path, deterministic):
    config = ExportConfig(steps=1, samples=3, deterministic=deterministic)
    model = onnx.load(str(export_checkpoint(checkpoint, tmp_path / "p.onnx", config).path))
    docs = {v.name: v.doc_string for v in (*model.graph.input, *model.graph.output)}
    assert "[B, 5] float32" in docs["obs"] and "position[3], velocity[2]" in docs["obs"]
    assert "NaN" in docs["obs"]  # no guard inside: the caller checks
    assert "[B, 3] float32" in docs["action"] and "rescaled to the action bounds" in docs["action"]
    assert "[0, 4]" in docs["action"]  # the fixture's knee bounds
    if deterministic:
        assert "noise" not in docs and "noise" not in model.doc_string
        assert model.doc_string.endswith(": obs -> action (deterministic: a0 = 0)")
    else:
        assert "standard normal" in docs["noise"] and "clamped to [-1, 1] inside" in docs["noise"]
        assert model.doc_string.endswith(": obs, noise -> action")
