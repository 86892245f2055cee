"""FlowRL training (Lv et al., 2025, arXiv 2506.12811): flow policy, critics, losses and loop.

The researcher-facing API, importable from here (``from flowrl_deploy.train import TrainConfig, train``):
:class:`TrainConfig`, :func:`train` and its :class:`TrainResult`, :func:`resume_config`,
:func:`checkpoint_act_fn` with its :class:`EvalResult`, and :func:`load_actor` (a checkpoint's torch
actor, for batched sampling at any N). They are loaded on first use, so the modules
that work without torch (``config``, ``envs``, ``evaluate``) still do. The function ``evaluate`` is
imported from its module, ``flowrl_deploy.train.evaluate``, whose name it would shadow here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from flowrl_deploy.extras import naming_the_extra

if TYPE_CHECKING:  # what __getattr__ loads on first use, typed for mypy and pyright (its own hint is Any)
    from flowrl_deploy.train.actor import load_actor as load_actor
    from flowrl_deploy.train.config import TrainConfig as TrainConfig
    from flowrl_deploy.train.evaluate import EvalResult as EvalResult
    from flowrl_deploy.train.evaluate import checkpoint_act_fn as checkpoint_act_fn
    from flowrl_deploy.train.loop import TrainResult as TrainResult
    from flowrl_deploy.train.loop import train as train
    from flowrl_deploy.train.resume import resume_config as resume_config

_EXPORTS = {
    "TrainConfig": "config",
    "train": "loop",
    "TrainResult": "loop",
    "resume_config": "resume",
    "EvalResult": "evaluate",
    "checkpoint_act_fn": "evaluate",
    "load_actor": "actor",
}
__all__ = sorted(_EXPORTS)


if not TYPE_CHECKING:  # type checkers read the names from imports; a module __getattr__ would pass any typo

    def __getattr__(name: str) -> Any:
        if name not in _EXPORTS:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        # a base install (no torch) says what to install, not a bare traceback
        with naming_the_extra("train", f"flowrl_deploy.train.{name}"):
            return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
