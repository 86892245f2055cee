"""Versions of the libraries an artifact was made with, recorded for provenance."""

from __future__ import annotations

import platform
from importlib import metadata

from flowrl_deploy import __version__

_TRACKED = (
    "torch",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "dm_control",
    "mujoco",
    "gymnasium",
    "humanoid_bench",  # HumanoidBench's distribution name; its tasks' rewards and resets change between versions
)


def library_versions() -> dict[str, str]:
    """Installed versions of flowrl-deploy and the libraries its artifacts depend on."""
    found = {"flowrl-deploy": __version__, "python": platform.python_version()}
    for name in _TRACKED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
