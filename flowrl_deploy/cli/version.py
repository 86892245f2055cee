"""`flowrl --version`: this release and the libraries it runs on, for a bug report."""

from __future__ import annotations

from typing import Annotated

import typer


def _print_version(value: bool) -> None:
    if value:
        from flowrl_deploy.versions import version_report

        typer.echo(version_report())
        raise typer.Exit()


def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print flowrl-deploy's version and its libraries' (python, numpy, grpcio, torch, …) and exit.",
        ),
    ] = False,
) -> None:
    pass
