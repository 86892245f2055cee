"""`flowrl inspect`: print an exported policy's contract, hashes, provenance and I/O shapes; or, with
--server, the contract of the policy a running server serves (GetSpec)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flowrl_deploy.cli._common import Connection, connects, finite, given, user_errors
from flowrl_deploy.errors import FlowRLError

if TYPE_CHECKING:
    from flowrl_deploy.client import PolicyInfo


def _served(info: PolicyInfo, server: str) -> dict[str, Any]:
    """What ``flowrl inspect --server --json`` prints of a served policy."""
    return {
        "server": server,
        "server_version": info.server_version,
        "model_version": info.model_version,
        "contract_hash": info.contract_hash,
        "contract": info.contract.to_dict(),
        "max_batch": info.max_batch,
    }


def _format_served(served: dict[str, Any]) -> str:
    """The served policy as ``flowrl inspect FILE`` prints a file: the contract's lines as that rendering
    writes them, after the server's own."""
    from flowrl_deploy.export.inspect import contract_lines

    release = f" (flowrl-deploy {served['server_version']})" if served["server_version"] else ""
    version = served["model_version"]
    return "\n".join(
        [
            f"server       {served['server']}{release}",
            f"model        {version} (its sha256 begins {version.partition('-')[2]}: compare `flowrl inspect FILE`)",
            f"contract     {served['contract_hash']}",
            *contract_lines(served["contract"]),
            f"max batch    {served['max_batch']} rows a call",
        ]
    )


@user_errors
@connects
def inspect(
    ctx: typer.Context,
    model: Annotated[
        Path | None,
        typer.Argument(metavar="MODEL", help="An ONNX policy written by `flowrl export` (or give --server)."),
    ] = None,
    *,
    server: Annotated[
        str, typer.Option(help="host:port of a running `flowrl serve` whose policy to show, instead of MODEL.")
    ] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    connection: Connection,
    timeout: Annotated[float, typer.Option(parser=finite, help="Seconds to wait for the server (--server).")] = 5.0,
) -> None:
    """Show what a controller must agree on with MODEL (observation layout, action names and bounds, control
    period, noise) and where it came from; with --server instead of MODEL, the served policy's contract."""
    if model is not None:
        if given(ctx, "server"):
            raise FlowRLError("give MODEL or --server, not both")
        for name in ("token", "token_file", "tls_ca", "tls_cert", "tls_key", "timeout"):
            if given(ctx, name, from_environment=False):  # an exported FLOWRL_TOKEN is no mistake
                raise FlowRLError(f"--{name.replace('_', '-')} is used only with --server")
        from flowrl_deploy.export.inspect import format_inspection, inspect_policy

        info = inspect_policy(model)
        typer.echo(json.dumps(info, indent=2) if as_json else format_inspection(info))
        return
    if not given(ctx, "server"):
        raise FlowRLError("give MODEL (a policy .onnx file) or --server HOST:PORT (a running server)")
    with connection.client(timeout) as client:
        served = _served(client.spec(), connection.server)
    typer.echo(json.dumps(served, indent=2) if as_json else _format_served(served))
