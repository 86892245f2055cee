"""`flowrl reload`: ask a running server to swap in a model (the Reload call), as `--watch` does."""

from __future__ import annotations

from typing import Annotated

import typer

from flowrl_deploy.cli._common import Connection, connects, finite, user_errors


@user_errors
@connects
def reload(
    path: Annotated[
        str,
        typer.Argument(
            metavar="PATH",
            help="The new model: an .onnx file beside the served one, or a checkpoint of the served run (a "
            "checkpoint or run directory is exported at the served N); a relative path is taken from there "
            "(new.onnx, checkpoints/best), an absolute one is read on the server's machine (default: read the "
            "served path again).",
        ),
    ] = "",
    *,
    connection: Connection,
    timeout: Annotated[float, typer.Option(parser=finite, help="Seconds to wait (loading warms the model up).")] = 60.0,
) -> None:
    """Swap PATH in atomically once the server has checked its contract (in-flight calls finish on the old model)."""
    import grpc

    from flowrl_deploy.client import ServiceError
    from flowrl_deploy.errors import FlowRLError

    with connection.client(timeout) as client:
        try:
            new, previous = client.reload(path, timeout_s=timeout)
        except ServiceError as exc:
            if exc.code != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            raise FlowRLError(  # the server drops a reload whose caller has stopped waiting
                f"{exc}: no answer within --timeout {timeout:g} s, so the server abandons the reload and keeps "
                f"the model it serves (unless it had just swapped: `flowrl stats --server {connection.server}` tells); "
                "give a longer --timeout to a model that takes longer to load"
            ) from None
    if new == previous:  # the very bytes served already: the server swapped nothing
        typer.echo(f"unchanged: the server already serves that content as {new}")
    else:
        typer.echo(f"reloaded: {previous} -> {new}")
