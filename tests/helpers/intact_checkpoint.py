"""A checkpoint folder with only what a resume's choice of checkpoint reads: its document and whole (tiny)
tensor files, so that it counts as intact (``flowrl_deploy.checkpoint.checkpoint_damage``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from flowrl_deploy.checkpoint import DOCUMENT_FILE, MODEL_FILE, TRAINING_TENSORS_FILE


def intact_checkpoint(path: Path, document: str = "{}") -> Path:
    """Make ``path`` (and its parents) a checkpoint folder holding ``document`` and two whole tensor files."""
    path.mkdir(parents=True, exist_ok=True)
    (path / DOCUMENT_FILE).write_text(document)
    for name in (MODEL_FILE, TRAINING_TENSORS_FILE):
        save_file({"x": np.zeros(1, np.float32)}, str(path / name))
    return path
