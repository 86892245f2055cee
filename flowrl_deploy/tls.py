"""Reading the PEM files of TLS and mTLS, shared by the client and the server."""

from __future__ import annotations

from pathlib import Path

from flowrl_deploy.errors import FlowRLError


def read_pem(path: str, what: str) -> bytes:
    """A PEM file's bytes; a file that is not PEM is refused here, naming ``what`` it should be,
    rather than surfacing later as a puzzling handshake or bind failure."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise FlowRLError(f"cannot read {what} {path}: {exc}") from exc
    if b"-----BEGIN " not in data:
        raise FlowRLError(f"{what} {path} is not a PEM file (no '-----BEGIN ...' line)")
    return data
