"""Helpers shared by the command modules."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import ParamSpec, TypeVar

import typer

from flowrl_deploy.checkpoint import check_output_path
from flowrl_deploy.errors import FlowRLError


class Solver(str, Enum):
    """ODE solver choices (flowrl_deploy.spec.SOLVERS) as a Typer choice list."""

    midpoint = "midpoint"
    euler = "euler"


def finite(text: str) -> float:
    """Parser of every float option: a number, never NaN or infinity (Python's float() takes both)."""
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {text!r}")
    return value


def check_writable(flag: str, path: Path) -> None:
    """Fail now, rather than after the work, when a report file cannot be written at ``path``."""
    if path.is_dir():
        raise FlowRLError(f"{flag} {path} is a directory; give a file path such as {path / 'report.json'}")
    check_output_path(flag, path)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):
            pass
    except (FileExistsError, NotADirectoryError):
        raise FlowRLError(f"cannot write {flag} {path}: part of its folder {path.parent} is a file") from None
    except OSError as exc:
        raise FlowRLError(f"cannot write {flag} {path}: {exc.strerror or exc}") from None
    if not existed:
        path.unlink()


def write_report(flag: str, path: Path, report: object) -> None:
    """Write a command's JSON report to ``path`` (checked earlier by :func:`check_writable`)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        raise FlowRLError(f"cannot write {flag} {path}: {exc.strerror or exc}") from None


P = ParamSpec("P")
R = TypeVar("R")


def user_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn a :class:`FlowRLError` into a one-line message on stderr and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except FlowRLError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None

    return wrapper
