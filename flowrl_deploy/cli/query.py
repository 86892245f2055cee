"""`flowrl query`: ask a running server for the action of one observation (or a batch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flowrl_deploy.cli._common import Server, TlsCa, TlsCert, TlsKey, Token, finite, server_client, user_errors


@user_errors
def query(
    server: Server = "localhost:50051",
    obs: Annotated[str, typer.Option(help="Observation as JSON: [..] or a batch [[..], ..].")] = "",
    obs_file: Annotated[Path | None, typer.Option(help="A JSON file holding the observation(s), or .npy.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the policy noise.")] = None,
    contract_hash: Annotated[str, typer.Option(help="Pin the policy contract (hash from `flowrl inspect`).")] = "",
    token: Token = "",
    tls_ca: TlsCa = "",
    tls_cert: TlsCert = "",
    tls_key: TlsKey = "",
    timeout: Annotated[float, typer.Option(parser=finite, help="Seconds to wait.")] = 5.0,
) -> None:
    """Print the served policy's action(s) for an observation, as JSON."""
    import numpy as np

    from flowrl_deploy.codec import decode
    from flowrl_deploy.errors import FlowRLError

    if bool(obs) == (obs_file is not None):
        raise FlowRLError("pass exactly one of --obs or --obs-file")
    try:
        if obs_file is not None and obs_file.suffix == ".npy":
            values = np.load(obs_file, allow_pickle=False)
        else:
            values = json.loads(obs_file.read_text() if obs_file is not None else obs)
        with np.errstate(over="ignore"):
            array = np.asarray(values, dtype=np.float32)
    except (OSError, ValueError, TypeError) as exc:
        raise FlowRLError(f"cannot read the observation: {exc}") from exc
    if not np.isfinite(array).all():
        raise FlowRLError("the observation holds NaN, infinite or beyond-float32 values")
    with server_client(server, token, tls_ca, tls_cert, tls_key, timeout) as client:
        reply = client.act_reply(array, seed=seed, contract_hash=contract_hash)
    action = decode(reply.action, name="action")
    typer.echo(
        json.dumps(
            {"action": action.tolist(), "model_version": reply.model_version, "inference_us": reply.inference_us}
        )
    )
