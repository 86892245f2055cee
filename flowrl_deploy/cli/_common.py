"""Helpers shared by the command modules."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from enum import Enum
from typing import ParamSpec, TypeVar

import typer

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
