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


def check_key_pair(cert_path: str, key_path: str) -> None:
    """Refuse a certificate and key that do not belong together (or are swapped): gRPC would only
    fail to bind, with the cause in its log."""
    import ssl

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        raise FlowRLError(
            f"--tls-cert {cert_path} and --tls-key {key_path} are not a certificate and its private key "
            f"({exc.reason or exc})"
        ) from None
