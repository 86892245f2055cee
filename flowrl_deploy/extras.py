"""Which optional extra of pyproject.toml installs each optional module, and the install command
that a missing one's error message names. The base install (a robot computer) has none of them."""

from __future__ import annotations

import contextlib
import importlib.util
import re
from collections.abc import Iterator
from importlib import metadata

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


RUNTIMES = ("onnxruntime", "onnxruntime-gpu")
"""The distributions of the module onnxruntime: pyproject.toml's base requirements pick one by platform
(onnxruntime-gpu on Linux x86-64), and pip installs one over the other's files."""


def install_command(extra: str) -> str:
    """The command that installs ``extra`` (one extra, or several joined by commas): ``pip install
    "flowrl-deploy[extra]"``; on an install whose onnxruntime is not the distribution the base requirements
    pick here (docs/install.md's CPU-only and Jetson installs, made with ``--no-deps``), the extra's own
    requirements, with why: pip would put the picked runtime over the one in place."""
    command = f'pip install "flowrl-deploy[{extra}]"'
    other = _other_runtime()
    requirements = _requirements_of(extra.split(",")) if other is not None else []
    if not requirements:
        return command
    picked, installed = other
    what = "extras'" if "," in extra else "extra's"
    adds = f"put {picked} over the {installed} installed here" if installed else f"add {picked}, left out here"
    listed = " ".join(f'"{requirement}"' for requirement in requirements)
    return f'pip install {listed}  # the {what} requirements alone: "flowrl-deploy[{extra}]" would {adds}'


def _requirements(extra: str) -> list[tuple[str, str]]:
    """flowrl-deploy's installed requirements that ``extra`` adds to the base ones, as (name, requirement
    without its marker); ``extra`` "" gives the base requirements. Empty when flowrl-deploy is not installed
    (run from a tree) or packaging, which evaluates the markers, is missing."""
    try:
        from packaging.requirements import Requirement

        requires = metadata.requires("flowrl-deploy") or []
    except (ImportError, metadata.PackageNotFoundError):
        return []
    found = []
    for line in requires:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is not None and not marker.evaluate({"extra": extra}):
            continue  # another platform's, or another extra's
        if extra and (marker is None or marker.evaluate({"extra": ""})):
            continue  # a base requirement
        requirement.marker = None
        found.append((requirement.name, str(requirement)))
    return found


def _requirements_of(extras: list[str]) -> list[str]:
    """The requirements ``extras`` add to the base ones (an extra naming flowrl-deploy's own extras expanded),
    each once, in pyproject.toml's order."""
    found: dict[str, None] = {}
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop(0).strip()
        if extra in seen:
            continue
        seen.add(extra)
        for name, requirement in _requirements(extra):
            if _normalized(name) == "flowrl-deploy":
                pending.extend(requirement.partition("[")[2].partition("]")[0].split(","))
            else:
                found.setdefault(requirement)
    return list(found)


def _other_runtime() -> tuple[str, str | None] | None:
    """(the onnxruntime distribution the base requirements pick here, the one installed or None) when the
    picked one is not installed; None when it is, or when which one is picked is unknown."""
    picked = [name for name, _ in _requirements("") if _normalized(name) in RUNTIMES]
    if len(picked) != 1:
        return None
    installed = []
    for name in RUNTIMES:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        installed.append(name)
    if _normalized(picked[0]) in installed:
        return None
    return picked[0], installed[0] if installed else None


def _normalized(name: str) -> str:
    """A distribution's name as pip compares it: onnxruntime_gpu is onnxruntime-gpu."""
    return re.sub(r"[-_.]+", "-", name).lower()


def missing_modules(*extras: str) -> list[str]:
    """The optional modules of ``extras`` that are not installed here (found, not imported)."""
    wanted = [module for module, of in EXTRAS_OF.items() if set(of) & set(extras)]
    return [module for module in wanted if importlib.util.find_spec(module) is None]


def missing_extra_message(exc: ModuleNotFoundError, command: str, needed_by: str = "") -> str | None:
    """The one-line message for ``flowrl <command>`` (or ``needed_by``, a part of the Python API) stopped
    by a missing optional module, naming the module and the extra to install (the one named like the
    command when several install it); None when the missing module is none of them (a bug, not an install
    to complete)."""
    module = (exc.name or "").partition(".")[0]
    extras = EXTRAS_OF.get(module)
    if extras is None:
        return None
    extra = command if command in extras else extras[0]
    return f"{needed_by or f'flowrl {command}'} needs {module}, which is not installed: {install_command(extra)}"


@contextlib.contextmanager
def naming_the_extra(extra: str, needed_by: str) -> Iterator[None]:
    """For the Python API's lazy imports (``from flowrl_deploy.train import train``, ``export_checkpoint``):
    a missing optional module raises a ModuleNotFoundError whose text is :func:`missing_extra_message`'s
    for ``extra``, naming ``needed_by`` (its ``name`` kept, so ``except ImportError`` and the CLI's own
    message are unchanged); a missing module of no extra (a bug) raises as it was."""
    try:
        yield
    except ModuleNotFoundError as exc:
        message = missing_extra_message(exc, extra, needed_by)
        if message is None:
            raise
        raise ModuleNotFoundError(message, name=exc.name, path=exc.path) from exc
