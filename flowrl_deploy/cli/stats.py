"""`flowrl stats`: a running server's figures (GetStats): model, sessions, calls, latency, batches."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from flowrl_deploy.cli._common import Server, TlsCa, TlsCert, TlsKey, Token, finite, server_client, user_errors


@user_errors
def stats(
    server: Server = "localhost:50051",
    token: Token = "",
    tls_ca: TlsCa = "",
    tls_cert: TlsCert = "",
    tls_key: TlsKey = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    timeout: Annotated[float, typer.Option(parser=finite, help="Seconds to wait.")] = 5.0,
) -> None:
    """Print a running server's model version, uptime, sessions, per-method calls and latency, batches and reloads."""
    from google.protobuf.json_format import MessageToDict

    with server_client(server, token, tls_ca, tls_cert, tls_key, timeout) as client:
        reply = client.stats()
    if as_json:
        typer.echo(json.dumps(MessageToDict(reply, always_print_fields_with_no_presence=True), indent=2))
        return
    typer.echo(
        f"model {reply.model_version}, up {reply.uptime_s:.0f} s, {reply.sessions} sessions, "
        f"{reply.batches} batches (mean size {reply.mean_batch_size:.2f}), {reply.reloads} reloads"
    )
    typer.echo(f"{'method':<10} {'requests':>9} {'errors':>7} {'p50 µs':>8} {'p99 µs':>8}")
    for m in reply.methods:
        p50, p99 = (f"{m.p50_us:>8.0f}", f"{m.p99_us:>8.0f}") if m.timed_calls else (f"{'-':>8}", f"{'-':>8}")
        typer.echo(f"{m.method:<10} {m.requests:>9} {m.errors:>7} {p50} {p99}")
