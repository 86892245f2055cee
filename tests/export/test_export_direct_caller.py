"""What docs/export.md's "Calling the file directly" promises a caller that runs the file with onnxruntime alone."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from export_fixtures import SPEC

from flowrl_deploy.export import ExportConfig, export_checkpoint


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("opset", [13, 18])
def test_fp32_rows_are_bit_exact_across_batch_sizes_and_nan_is_not_guarded(checkpoint, tmp_path, opset):
    s = session(export_checkpoint(checkpoint, tmp_path / "p.onnx", ExportConfig(steps=2, opset=opset)).path)
    rng = np.random.default_rng(3)
    obs = (rng.standard_normal((16, SPEC.obs_dim)) * 3).astype(np.float32)
    noise = rng.standard_normal((16, SPEC.act_dim)).astype(np.float32)
    (batched,) = s.run(None, {"obs": obs, "noise": noise})
    one_by_one = [s.run(None, {"obs": obs[i : i + 1], "noise": noise[i : i + 1]})[0][0] for i in range(16)]
    np.testing.assert_array_equal(batched, one_by_one)
    obs[0, 0] = np.nan
    (actions,) = s.run(None, {"obs": obs[:2], "noise": noise[:2]})
    assert np.isnan(actions[0]).all() and np.isfinite(actions[1]).all()  # the caller must check its input


def test_a_fixed_batch_file_shares_the_dynamic_files_contract_hash(checkpoint, tmp_path):
    dynamic = export_checkpoint(checkpoint, tmp_path / "d.onnx", ExportConfig(steps=1, samples=3))
    fixed = export_checkpoint(checkpoint, tmp_path / "b4.onnx", ExportConfig(steps=1, samples=3, batch=4))
    assert fixed.contract_hash == dynamic.contract_hash and fixed.sha256 != dynamic.sha256


def test_copies_of_one_checkpoint_export_other_bytes_with_one_contract_hash(checkpoint, tmp_path):
    import shutil

    copy = shutil.copytree(checkpoint, tmp_path / "copy" / checkpoint.name)
    first = export_checkpoint(checkpoint, tmp_path / "a.onnx", ExportConfig(steps=1, samples=3))
    second = export_checkpoint(copy, tmp_path / "b.onnx", ExportConfig(steps=1, samples=3))
    assert second.provenance["source_checkpoint"] == str(copy)  # the path is recorded
    assert second.sha256 != first.sha256 and second.contract_hash == first.contract_hash
