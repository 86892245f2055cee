"""`flowrl wait`: wait until a server's health is SERVING, for a service's start-up and for scripts."""

from __future__ import annotations

from typing import Annotated

import typer

from flowrl_deploy.cli._common import Connection, connects, finite, user_errors

_ASKED = "; is `flowrl serve` running there?"
"""How PolicyClient.wait_ready's error ends, a question a connection hint answers better."""


@user_errors
@connects
def wait(
    *,
    connection: Connection,
    timeout: Annotated[
        float, typer.Option(parser=finite, help="Seconds to wait for SERVING (at most 86400) before exit 1.")
    ] = 30.0,
) -> None:
    """Wait until the server's health is SERVING (model loaded and warm): exit 0; after --timeout, exit 1
    with one line saying what it last saw (refused, NOT_SERVING, a TLS failure).

    For systemd's ExecStartPost= or ExecStartPre=, an init container, a script. Health takes no token:
    given one, it also asks for the served model, so that a token the server refuses fails here."""
    from flowrl_deploy.connection import connection_hint
    from flowrl_deploy.errors import FlowRLError

    with connection.client(timeout) as client:
        try:
            client.wait_ready(timeout_s=timeout)
        except FlowRLError as exc:
            message = str(exc)
            if hint := connection_hint(message, client.target, connection.tls_ca, connection.tls_cert):
                message = f"{message.removesuffix(_ASKED)}; {hint}"  # the hint replaces the question
            raise FlowRLError(message) from None
        model = f" (model {client.spec().model_version}, token accepted)" if client.metadata else ""
    typer.echo(f"{connection.server} is SERVING{model}")
