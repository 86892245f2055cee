"""Versions: the libraries an artifact was made with (recorded for provenance), and this release as
``flowrl --version`` and a server's GetSpec/GetStats report it."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

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


_REPORTED = ("numpy", "safetensors", "grpcio", "protobuf", *_TRACKED)  # serving's libraries, then training's


def _source_checkout() -> Path | None:
    """The git checkout this package runs from (an editable install), or None (an installed wheel)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / ".git").exists() and (root / "pyproject.toml").is_file() else None


@functools.cache
def release() -> str:
    """This flowrl-deploy's version; run from a git checkout, with its commit as a PEP 440 local part
    (``0.1.0+g27a1610c``, ``.dirty`` when tracked files are modified), since the package version is
    bumped per release only and a checkout's commits would otherwise read the same."""
    checkout = _source_checkout()
    if checkout is None:
        return __version__
    try:

        def git(*args: str) -> str:
            # --no-optional-locks: `git status` refreshes the user's .git/index otherwise, taking
            # index.lock (a `git commit` at that moment failed) and, under sudo, writing it as root
            command = ["git", "--no-optional-locks", *args]
            run = subprocess.run(command, cwd=checkout, capture_output=True, text=True, timeout=5, check=True)
            return run.stdout.strip()

        commit = git("rev-parse", "--short=8", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}" if commit else __version__


def version_report() -> str:
    """``flowrl --version``'s text: this release, then python and each installed library, one a line."""
    lines = [f"flowrl-deploy {release()}", f"python {platform.python_version()}"]
    for name in dict.fromkeys(_REPORTED):
        try:
            lines.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return "\n".join(lines)
