"""Reading and checking the PEM files of TLS and mTLS, shared by the client and the server.

Every check runs before gRPC sees the files: gRPC reports a bad file only as a failed handshake
or bind, with the cause in its log, and never names the file or the flag.
"""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path

from flowrl_deploy.errors import FlowRLError


def read_pem(path: str | os.PathLike[str], what: str) -> bytes:
    """A PEM file's bytes; a file that is not PEM is refused here, naming ``what`` it should be,
    rather than surfacing later as a puzzling handshake or bind failure."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or a device would block or never end
            raise FlowRLError(f"{what} {path} is not a regular file")
        data = Path(path).read_bytes()
    except OSError as exc:
        raise FlowRLError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise FlowRLError(f"{what} {path} is not a PEM file (no '-----BEGIN ...' line)")
    return data


def _no_certificate(data: bytes) -> str:
    """Why PEM ``data`` holds no certificate that OpenSSL reads ('' when it holds one or more)."""
    try:
        text = data.decode("ascii", "ignore")  # the PEM blocks are ASCII; comments around them may not be
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except (ssl.SSLError, ValueError):
        if b"PRIVATE KEY-----" in data:
            return "holds a private key, not a certificate"
        return "holds no valid PEM certificate"
    return ""


def read_certificates(path: str | os.PathLike[str], flag: str) -> bytes:
    """The bytes of a PEM file of one or more certificates (a CA, or a certificate chain); a file
    that holds none (garbage, a private key, a truncated certificate) is refused, naming ``flag``
    (the client's --tls-ca or tls_ca, the server's --client-ca)."""
    data = read_pem(path, flag)
    if why := _no_certificate(data):
        raise FlowRLError(f"{flag} {path} {why}")
    return data


class _EncryptedKey(Exception):
    """Raised by the password callback: a key that needs a passphrase."""


def _no_passphrase() -> str:
    raise _EncryptedKey


def check_key_pair(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    names: tuple[str, str] = ("--tls-cert", "--tls-key"),
) -> tuple[bytes, bytes]:
    """The bytes of a certificate and its private key; refuse one without the other, files that
    are not PEM, a swapped pair and a key of another certificate, naming the files, which is at
    fault and each as ``names`` gives them (the flags, or a Python API's arguments): gRPC would
    fail the handshake or the bind, or abort the process."""
    cert_name, key_name = names
    if not (cert_path and key_path):
        given, missing = names if cert_path else names[::-1]
        raise FlowRLError(f"{cert_name} and {key_name} go together: {given} was given without {missing}")
    cert, key = read_pem(cert_path, cert_name), read_pem(key_path, key_name)

    def refused(why: str) -> FlowRLError:
        return FlowRLError(
            f"{cert_name} {cert_path} and {key_name} {key_path} are not a certificate and its private key: {why}"
        )

    if why := _no_certificate(cert):
        raise refused("they are swapped" if b"CERTIFICATE-----" in key else f"{cert_name} {why}")
    try:  # the password callback stops OpenSSL from prompting on the terminal for an encrypted key
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path, password=_no_passphrase)
    except _EncryptedKey:
        raise refused(f"{key_name} is encrypted, and gRPC needs an unencrypted key") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise refused("the key is another certificate's") from None
        if exc.reason == "NO_CERTIFICATE_ASSIGNED":  # OpenSSL's word for a key of another type (RSA vs EC)
            raise refused("the key is another certificate's (its key type differs from the certificate's)") from None
        raise refused(f"{key_name} holds no valid PEM private key") from None
    return cert, key
