"""Whether onnxruntime's CUDA provider can run here, for the tests that need a GPU (they skip elsewhere)."""

from __future__ import annotations

import pytest

from flowrl_deploy import ort


def _why_not_here() -> str:
    if ort.CUDA not in ort.import_onnxruntime().get_available_providers():
        return "this onnxruntime build has no CUDA provider"
    if not ort.cuda_device_present():
        return "no GPU here (these run where one is present)"
    ort.preload_cuda_libraries()
    return ort.cuda_library_error()


WHY_NOT = _why_not_here()
needs_cuda_provider = pytest.mark.skipif(
    bool(WHY_NOT), reason=f"onnxruntime's CUDA provider cannot run here: {WHY_NOT}"
)
"""The mark of a test module that runs on onnxruntime's CUDA provider (``pytestmark = needs_cuda_provider``)."""
