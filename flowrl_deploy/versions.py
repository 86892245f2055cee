"""Versions: the libraries an artifact was made with (recorded for provenance), this release as
``flowrl --version`` and a server's GetSpec/GetStats report it, and the one check of a format version
read from a file (:func:`version_problem`)."""

from __future__ import annotations

import functools
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

from flowrl_deploy import __version__
from flowrl_deploy.fieldtypes import is_int

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


def version_problem(value: object, what: str, current: int) -> str | None:
    """What is wrong with the format version ``value`` read from a file, or None when this version reads
    it: no integer (a bool is none), below 1 (every format starts at 1), or newer than ``current``. One
    wording for all five (docs/compatibility.md#format-versions): ``what`` names the field as the file
    spells it (``format_version``, ``config.config_version``); the caller says where, and what still works."""
    if not is_int(value) or value < 1:
        return f"{what} must be a positive integer, got {value!r:.40}"
    if value > current:
        return (
            f"{what} {value} was written by a newer flowrl-deploy (this version reads up to {current}); "
            "upgrade flowrl-deploy"
        )
    return None


def library_versions() -> dict[str, str]:
    """Installed versions of flowrl-deploy (its :func:`release`, which names the commit) and the libraries
    its artifacts depend on."""
    found = {"flowrl-deploy": release(), "python": platform.python_version()}
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


def _base_of(described: str) -> str | None:
    """The version setuptools-scm builds for ``git describe --tags --long`` output: a commit tagged
    ``vX.Y.Z`` is X.Y.Z, and N commits after it X.Y.(Z+1).devN; None for another kind of tag."""
    found = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)-(\d+)-g[0-9a-f]+", described)
    if found is None:
        return None
    major, minor, patch, distance = (int(part) for part in found.groups())
    return f"{major}.{minor}.{patch}" if distance == 0 else f"{major}.{minor}.{patch + 1}.dev{distance}"


def _counted(installed: str, count: str) -> str:
    """The version setuptools-scm builds for a commit with no ``vX.Y.Z`` tag before it, ``count`` commits
    from the first: the installed version's base (``fallback_version``'s, 0.1.1) with the dev number
    ``count``; the installed version as it is when it has no dev number or ``count`` is unknown."""
    found = re.fullmatch(r"(\d+\.\d+\.\d+)\.dev\d+", installed)
    return f"{found.group(1)}.dev{count}" if found and count.isdigit() else installed


@functools.cache
def release() -> str:
    """This flowrl-deploy's version. An installed wheel's is the version setuptools-scm built it as, which
    names its commit: after a tag vX.Y.Z, ``X.Y.(Z+1).devN+g<commit>`` is N commits after it (a tagged
    commit builds plain ``X.Y.Z``); in a clone without tags (this repository carries none) N counts every
    commit from the first, ``0.1.1.dev1282+g6c850797a``. Run from a git checkout (an editable install),
    whose version file says what it was at install time, git is asked at run time: the version a build
    of the checkout's commit gets (without a ``vX.Y.Z`` tag, the installed version's base with the dev
    number ``git rev-list --count HEAD``, as setuptools-scm counts it), ``.dirty`` when tracked files are
    modified."""
    checkout = _source_checkout()
    if checkout is None:
        return __version__
    try:

        def git(*args: str, check: bool = True) -> str:
            # --no-optional-locks: `git status` refreshes the user's .git/index otherwise, taking
            # index.lock (a `git commit` at that moment failed) and, under sudo, writing it as root
            command = ["git", "--no-optional-locks", *args]
            run = subprocess.run(command, cwd=checkout, capture_output=True, text=True, timeout=5, check=check)
            return run.stdout.strip() if run.returncode == 0 else ""

        commit = git("rev-parse", "--short=9", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        described = git("describe", "--tags", "--long", "--match", "v[0-9]*", check=False)  # fails without tags
        count = "" if described else git("rev-list", "--count", "HEAD", check=False)
    except (OSError, subprocess.SubprocessError):
        return __version__
    if not commit:
        return __version__
    base = _base_of(described) or _counted(__version__.split("+")[0], count)
    return f"{base}+g{commit}{'.dirty' if dirty else ''}"


def version_report() -> str:
    """``flowrl --version``'s text: this release, then python and each installed library, one a line."""
    lines = [f"flowrl-deploy {release()}", f"python {platform.python_version()}"]
    for name in dict.fromkeys(_REPORTED):
        try:
            lines.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return "\n".join(lines)
