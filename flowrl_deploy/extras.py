"""Which optional extra of pyproject.toml installs each optional module, and the install command
that a missing one's error message names. The base install (a robot computer) has none of them."""

from __future__ import annotations

import importlib.util

EXTRAS_OF: dict[str, tuple[str, ...]] = {
    "torch": ("train", "export"),
    "dm_control": ("train",),
    "mujoco": ("train",),
    "gymnasium": ("train",),
    "tensorboard": ("train",),
    "matplotlib": ("train",),
    "onnx": ("export",),
}
"""Top-level module -> the extras that install it, the first one the default to name."""


def install_command(extra: str) -> str:
    return f'pip install "flowrl-deploy[{extra}]"'


def missing_modules(*extras: str) -> list[str]:
    """The optional modules of ``extras`` that are not installed here (found, not imported)."""
    wanted = [module for module, of in EXTRAS_OF.items() if set(of) & set(extras)]
    return [module for module in wanted if importlib.util.find_spec(module) is None]


def missing_extra_message(exc: ModuleNotFoundError, command: str) -> str | None:
    """The one-line message for ``flowrl <command>`` stopped by a missing optional module, naming
    the module and the extra to install (the one named like the command when several install it);
    None when the missing module is none of them (a bug, not an install to complete)."""
    module = (exc.name or "").partition(".")[0]
    extras = EXTRAS_OF.get(module)
    if extras is None:
        return None
    extra = command if command in extras else extras[0]
    return f"flowrl {command} needs {module}, which is not installed: {install_command(extra)}"
