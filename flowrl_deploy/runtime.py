"""The documented import path of a local policy, kept for user code: ``from flowrl_deploy.runtime import
OnnxPolicy``. It re-exports the public names of :mod:`flowrl_deploy.policy` (:class:`OnnxPolicy`,
:class:`SeededPolicy`) and :mod:`flowrl_deploy.ort` (:func:`make_session`, :func:`default_providers`),
and :class:`~flowrl_deploy.contract.PolicyContract`; it defines nothing. Importing it, as importing
:mod:`flowrl_deploy.ort`, sets ``ORT_DISABLE_TELEMETRY=1`` unless it is set. The other names it held
up to v0.1.0 still import from it, with a DeprecationWarning naming their module now (:data:`MOVED`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowrl_deploy.contract import PolicyContract
from flowrl_deploy.moved import moved_names
from flowrl_deploy.ort import default_providers, make_session
from flowrl_deploy.policy import OnnxPolicy, SeededPolicy

if TYPE_CHECKING:  # the names that moved (MOVED), typed for old code; __getattr__ loads them
    from flowrl_deploy.affinity import check_thread_count as check_thread_count
    from flowrl_deploy.checkpoint import BEST as BEST
    from flowrl_deploy.checkpoint import DOCUMENT_FILE as DOCUMENT_FILE
    from flowrl_deploy.checkpoint import LAST as LAST
    from flowrl_deploy.checkpoint import MODEL_FILE as MODEL_FILE
    from flowrl_deploy.checkpoint import read_checkpoint_link as read_checkpoint_link
    from flowrl_deploy.contract import NOISE_INPUT as NOISE_INPUT
    from flowrl_deploy.contract import OBS_INPUT as OBS_INPUT
    from flowrl_deploy.contract import contract_from_metadata as contract_from_metadata
    from flowrl_deploy.errors import FlowRLError as FlowRLError
    from flowrl_deploy.errors import SpecError as SpecError
    from flowrl_deploy.noise import Seed as Seed
    from flowrl_deploy.noise import draw_noise as draw_noise
    from flowrl_deploy.noise import session_noise as session_noise
    from flowrl_deploy.onnxfile import MAX_POLICY_BYTES as MAX_POLICY_BYTES
    from flowrl_deploy.onnxfile import check_policy_file as check_policy_file
    from flowrl_deploy.onnxfile import is_onnx_path as is_onnx_path
    from flowrl_deploy.onnxfile import read_policy_file as read_policy_file
    from flowrl_deploy.ort import CUDA_DRIVER as CUDA_DRIVER
    from flowrl_deploy.ort import cuda_device_present as cuda_device_present
    from flowrl_deploy.ort import import_onnxruntime as import_onnxruntime
    from flowrl_deploy.ort import onnxruntime_severity as onnxruntime_severity
    from flowrl_deploy.policy import Tensor as Tensor
    from flowrl_deploy.policy import check_graph_matches_contract as check_graph_matches_contract
    from flowrl_deploy.policy import one_observation as one_observation

__all__ = ["OnnxPolicy", "PolicyContract", "SeededPolicy", "default_providers", "make_session"]

MOVED = {
    "import_onnxruntime": "flowrl_deploy.ort",
    "onnxruntime_severity": "flowrl_deploy.ort",
    "CUDA_DRIVER": "flowrl_deploy.ort",
    "cuda_device_present": "flowrl_deploy.ort",
    "is_onnx_path": "flowrl_deploy.onnxfile",
    "MAX_POLICY_BYTES": "flowrl_deploy.onnxfile",
    "read_policy_file": "flowrl_deploy.onnxfile",
    "check_policy_file": "flowrl_deploy.onnxfile",
    "check_graph_matches_contract": "flowrl_deploy.policy",
    "one_observation": "flowrl_deploy.policy",
    "Tensor": "flowrl_deploy.policy",
    # v0.1.0's runtime imported these from their own modules, and user code reached them through it
    **dict.fromkeys(("session_noise", "draw_noise", "Seed"), "flowrl_deploy.noise"),
    **dict.fromkeys(("contract_from_metadata", "OBS_INPUT", "NOISE_INPUT"), "flowrl_deploy.contract"),
    **dict.fromkeys(
        ("read_checkpoint_link", "BEST", "LAST", "MODEL_FILE", "DOCUMENT_FILE"), "flowrl_deploy.checkpoint"
    ),
    "check_thread_count": "flowrl_deploy.affinity",
    **dict.fromkeys(("FlowRLError", "SpecError"), "flowrl_deploy.errors"),
}
"""The names this module held until it was split by job (53e7bff), and those it gave from other modules
of the package in v0.1.0, with the module each is in now."""

if not TYPE_CHECKING:  # type checkers read the moved names from imports; a module __getattr__ would pass any typo
    __getattr__ = moved_names(__name__, MOVED)
