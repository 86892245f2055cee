"""The documented import path of a local policy, kept for user code: ``from flowrl_deploy.runtime import
OnnxPolicy``. It re-exports the public names of :mod:`flowrl_deploy.policy` (:class:`OnnxPolicy`,
:class:`SeededPolicy`) and :mod:`flowrl_deploy.ort` (:func:`make_session`, :func:`default_providers`),
and :class:`~flowrl_deploy.contract.PolicyContract`; it defines nothing. Importing it, as importing
:mod:`flowrl_deploy.ort`, sets ``ORT_DISABLE_TELEMETRY=1`` unless it is set.
"""

from __future__ import annotations

from flowrl_deploy.contract import PolicyContract
from flowrl_deploy.ort import default_providers, make_session
from flowrl_deploy.policy import OnnxPolicy, SeededPolicy

__all__ = ["OnnxPolicy", "PolicyContract", "SeededPolicy", "default_providers", "make_session"]
