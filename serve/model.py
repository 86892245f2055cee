"""The served model: an :class:`OnnxPolicy` with a version, loaded, checked and warmed up."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.runtime import OnnxPolicy, is_onnx_path, read_policy_file
from flowrl_deploy.serve.errors import ContractMismatch

WARMUP_RUNS = 5

Exporter = Callable[[Path, Path, int | None], Path]
"""Exports a checkpoint for serving: ``(checkpoint, out, steps)`` writes ``out`` at ``steps`` flow
steps (None: the checkpoint's training flow steps) and returns the file to load. Serve never
imports the exporter (torch) itself: whoever builds the server passes one (``flowrl serve`` does)."""


class ServedModel:
    """One immutable loaded model; a reload builds a new one and swaps the reference."""

    def __init__(self, path: Path, policy: OnnxPolicy, generation: int, sha256: str) -> None:
        self.path = path
        self.policy = policy
        self.sha256 = sha256
        """Of the file's bytes: a reload of the very bytes served swaps nothing."""
        self.version = f"v{generation}-{sha256[:10]}"
        self.contract = policy.contract
        self.act_dim = policy.contract.act_dim
        self.obs_dim = policy.contract.obs_dim

    def run(self, obs: np.ndarray, noise: np.ndarray | None) -> tuple[np.ndarray, int]:
        """Actions for a batch and the onnxruntime time in microseconds."""
        start = time.perf_counter_ns()
        action = self.policy.run(obs, noise)  # checked when decoded (obs) and drawn (noise)
        return action, (time.perf_counter_ns() - start) // 1000

    def warm_up(self, batches: tuple[int, ...]) -> None:
        """Run every batch size once or more so that the first client call is not the slow one."""
        for batch in batches:
            for _ in range(WARMUP_RUNS):
                noise = np.zeros((batch, self.act_dim), np.float32) if self.policy.takes_noise else None
                self.run(np.zeros((batch, self.obs_dim), np.float32), noise)


def resolve_onnx(model: str, workdir: Path, steps: int | None, export_checkpoint: Exporter | None) -> Path:
    """``model`` itself if it is an ONNX file; a checkpoint is exported into ``workdir`` first with
    ``export_checkpoint``, at ``steps`` flow steps (None: the checkpoint's training flow steps)."""
    path = Path(model)
    if not path.exists():
        raise FlowRLError(f"model not found: {model}")
    if is_onnx_path(path):
        return path
    if export_checkpoint is None:
        raise FlowRLError(
            f"{model} is not an .onnx file; serving a checkpoint exports it first, and this server was built "
            "without an exporter (PolicyServer(config, export_checkpoint=...), as `flowrl serve` does): "
            "serve the .onnx file that `flowrl export` writes"
        )
    return export_checkpoint(path, workdir / "policy.onnx", steps)


def read_model_file(path: Path) -> tuple[bytes, str]:
    """The bytes of ``path`` and their sha256, read before any onnxruntime session is built so
    that a reload of the very bytes served costs a hash, not a model load."""
    data = read_policy_file(path)  # a pipe or device is refused, never read: reading one blocks
    return data, hashlib.sha256(data).hexdigest()


def load_model(
    path: Path, data: bytes, sha256: str, generation: int, *, providers: list[str] | None, threads: int
) -> ServedModel:
    """Load the bytes ``data`` read from ``path``; the version is ``v<generation>-<sha256 prefix>``."""
    policy = OnnxPolicy(data, providers=providers, threads=threads, name=str(path))
    return ServedModel(path, policy, generation, sha256)


def check_compatible(current: ServedModel, new: ServedModel) -> None:
    """Refuse a replacement whose client-facing contract differs from the served one."""
    if new.contract.hash() != current.contract.hash():
        diff = "; ".join(current.contract.differences(new.contract))
        raise ContractMismatch(f"{new.path} does not match the served policy contract ({diff})")
