"""`flowrl inspect`: print an exported policy's contract, hashes, provenance and I/O shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flowrl_deploy.cli._common import user_errors


@user_errors
def inspect(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="An ONNX policy written by `flowrl export`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Show what a controller must agree on with MODEL (observation layout, action names and bounds, control
    period, noise) and where it came from."""
    from flowrl_deploy.export.inspect import format_inspection, inspect_policy

    info = inspect_policy(model)
    typer.echo(json.dumps(info, indent=2) if as_json else format_inspection(info))
