"""`flowrl query`: ask a running server for the action of one observation (or a batch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flowrl_deploy.cli._common import finite, user_errors

MAX_TIMEOUT_S = 86400

# The TLS options of the client commands (`flowrl query`, `flowrl control`).
TlsCa = Annotated[str, typer.Option(help="PEM CA of the server's TLS certificate.")]
TlsCert = Annotated[str, typer.Option(help="PEM client certificate, for a server with --client-ca (mTLS).")]
TlsKey = Annotated[str, typer.Option(help="PEM private key of --tls-cert.")]


@user_errors
def query(
    server: Annotated[str, typer.Option(help="host:port of `flowrl serve`.")] = "localhost:50051",
    obs: Annotated[str, typer.Option(help="Observation as JSON: [..] or a batch [[..], ..].")] = "",
    obs_file: Annotated[Path | None, typer.Option(help="A JSON file holding the observation(s), or .npy.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the policy noise.")] = None,
    contract_hash: Annotated[str, typer.Option(help="Pin the policy contract (hash from `flowrl inspect`).")] = "",
    token: Annotated[str, typer.Option(help="The server's shared secret.", envvar="FLOWRL_TOKEN")] = "",
    tls_ca: TlsCa = "",
    tls_cert: TlsCert = "",
    tls_key: TlsKey = "",
    timeout: Annotated[float, typer.Option(parser=finite, help="Seconds to wait.")] = 5.0,
) -> None:
    """Print the served policy's action(s) for an observation, as JSON."""
    import grpc
    import numpy as np

    from flowrl_deploy.client import PolicyClient, ServiceError
    from flowrl_deploy.codec import decode
    from flowrl_deploy.control import check_tls_files, connection_hint
    from flowrl_deploy.errors import FlowRLError

    if bool(obs) == (obs_file is not None):
        raise FlowRLError("pass exactly one of --obs or --obs-file")
    if not 0 < timeout <= MAX_TIMEOUT_S:  # gRPC treats a deadline beyond ~300 years as already past
        raise FlowRLError(f"--timeout must lie in (0, {MAX_TIMEOUT_S}] seconds, got {timeout:g}")
    check_tls_files(tls_cert, tls_key)
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
    with PolicyClient(
        server, token=token, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, timeout_s=timeout
    ) as client:
        try:
            reply = client.act_reply(array, seed=seed, contract_hash=contract_hash)
        except ServiceError as exc:
            hint = connection_hint(tls_ca, tls_cert) if exc.code == grpc.StatusCode.UNAVAILABLE else ""
            raise FlowRLError(f"{exc} ({hint})" if hint else str(exc)) from None
    action = decode(reply.action, name="action")
    typer.echo(
        json.dumps(
            {"action": action.tolist(), "model_version": reply.model_version, "inference_us": reply.inference_us}
        )
    )
