"""Test certificates for TLS and mTLS: a CA, and certificates it signs (needs `cryptography`, a dev extra)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def issue(
    name: str,
    issuer_key=None,
    issuer_name=None,
    *,
    ca: bool = False,
    expires_in: datetime.timedelta = datetime.timedelta(days=30),
):
    """A key and a certificate for ``name`` (a CA with ``ca``; for localhost and 127.0.0.1 otherwise),
    valid until ``expires_in`` from now (30 days: the server warns of a certificate that expires within 7;
    negative: expired, valid for a day before that),
    signed by ``issuer_key`` (self-signed without one)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now, now + expires_in - datetime.timedelta(days=1)) - datetime.timedelta(minutes=1))
        .not_valid_after(now + expires_in)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return key, cert


def write_pem(directory: Path, stem: str, key, cert) -> tuple[str, str]:
    """Write ``stem``.key (mode 0600, as key tools write one: the server warns of a key every user may
    read) and ``stem``.pem in PEM form; return (certificate path, key path)."""
    key_path, cert_path = directory / f"{stem}.key", directory / f"{stem}.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(cert_path), str(key_path)
