"""Reading and checking the PEM files of TLS and mTLS, shared by the client and the server.

Every check runs before gRPC sees the files: gRPC reports a bad file only as a failed handshake
or bind, with the cause in its log, and never names the file or the flag.

The server's files are read again when they change (:class:`ServerTLSFiles`), and its certificate's
expiry is warned of (:func:`expiry_warning`).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import logging
import os
import re
import ssl
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from flowrl_deploy.errors import FlowRLError, printable

log = logging.getLogger("flowrl.serve")  # the rotation of files is the server's: its log


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


def warn_if_every_user_may_read(path: str | os.PathLike[str], flag: str) -> None:
    """Warn once when the secret file ``path`` (``flag``'s: the server's ``--tls-key``, ``--token-file``)
    may be read by every user of this machine (POSIX mode o+r, links followed). Not a refusal: a
    Kubernetes secret volume is 0644 unless its ``defaultMode`` says otherwise, and a file the server
    cannot stat is left to the read that names it."""
    if os.name != "posix":
        return
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return
    if mode & stat.S_IROTH:
        log.warning(
            "%s %s may be read by every user of this machine (mode %04o): chmod 600 it (a Kubernetes secret: "
            "defaultMode 0400)",
            flag,
            printable(os.fspath(path)),
            mode,
        )


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


def unpaired(cert_given: bool, names: tuple[str, str] = ("--tls-cert", "--tls-key")) -> str:
    """Why a certificate without its key (``cert_given``), or a key without its certificate, is refused."""
    given, missing = names if cert_given else names[::-1]
    return f"{names[0]} and {names[1]} go together: {given} was given without {missing}"


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
        raise FlowRLError(unpaired(bool(cert_path), names))
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


_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)
_UTC_TIME, _GENERALIZED_TIME, _VERSION = 0x17, 0x18, 0xA0  # DER tags


def _der(der: bytes, at: int) -> tuple[int, int, int]:
    """The tag of the DER element at ``at``, where its content starts and where it ends."""
    tag, length, at = der[at], der[at + 1], at + 2
    if length & 0x80:  # the long form: the next (length & 0x7f) bytes hold the length
        count = length & 0x7F
        length, at = int.from_bytes(der[at : at + count], "big"), at + count
    return tag, at, at + length


def not_after(pem: bytes) -> datetime.datetime | None:
    """When the first certificate of ``pem`` (a served chain's own, which comes first) expires, in
    UTC; None when it cannot be read. The standard library reads a certificate's dates only from a
    CA (``SSLContext.get_ca_certs``), so its DER is read here: Certificate → tbsCertificate →
    ([0] version), serialNumber, signature, issuer, validity → notBefore, notAfter (RFC 5280)."""
    match = _CERTIFICATE.search(pem)
    return None if match is None else _not_after(match[1])


def earliest_not_after(pem: bytes) -> datetime.datetime | None:
    """When the first of ``pem``'s certificates to expire does, in UTC (None when none can be read):
    a chain stops verifying when any of its certificates expires, the served one's or an
    intermediate's, and a client CA bundle stops verifying the clients of each CA as it expires."""
    dates = [date for match in _CERTIFICATE.finditer(pem) if (date := _not_after(match[1])) is not None]
    return min(dates, default=None)


def _not_after(base64_der: bytes) -> datetime.datetime | None:
    """:func:`not_after` of one certificate, the base64 text between its PEM lines."""
    try:
        der = base64.b64decode(b"".join(base64_der.split()), validate=True)
        _, at, _ = _der(der, 0)  # Certificate
        _, at, _ = _der(der, at)  # tbsCertificate
        for _ in range(4 if der[at] == _VERSION else 3):  # up to validity
            at = _der(der, at)[2]
        _, at, _ = _der(der, at)  # validity
        tag, start, end = _der(der, _der(der, at)[2])  # notAfter
        text = der[start:end].decode("ascii")
        if tag == _UTC_TIME:  # YYMMDDHHMMSSZ: 50-99 are 19YY, 00-49 20YY (RFC 5280 4.1.2.5.1)
            text = ("19" if int(text[:2]) >= 50 else "20") + text
        elif tag != _GENERALIZED_TIME:
            return None
        return datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    except (IndexError, ValueError, binascii.Error):
        return None


EXPIRY_WARNING_DAYS = 7
"""A served certificate that expires within this many days is warned of."""


def _expiry_stage(expires: datetime.datetime | None, now: datetime.datetime | None = None) -> str:
    """'expired', 'expiring' (within :data:`EXPIRY_WARNING_DAYS`) or '' (neither, or not known)."""
    if expires is None:
        return ""
    left = expires - (now or datetime.datetime.now(datetime.timezone.utc))
    return "expired" if left <= datetime.timedelta(0) else "expiring" if left.days < EXPIRY_WARNING_DAYS else ""


def expiry_warning(
    expires: datetime.datetime | None, path: str | os.PathLike[str], now: datetime.datetime | None = None
) -> str:
    """A warning of ``--tls-cert`` ``path`` expiring on ``expires``: expired, or within
    :data:`EXPIRY_WARNING_DAYS`; '' when neither (or its expiry is unknown)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    stage = _expiry_stage(expires, now)
    if not stage or expires is None:
        return ""
    date = expires.strftime("%Y-%m-%d %H:%M:%S UTC")
    if stage == "expired":
        return f"--tls-cert {path} expired on {date}: clients that verify the server will refuse it"
    days = (expires - now).days
    left = "less than a day" if days == 0 else "1 day" if days == 1 else f"{days} days"
    return f"--tls-cert {path} expires in {left} ({date}): clients that verify the server will then refuse it"


@dataclass(frozen=True)
class ServerTLS:
    """The server's certificate chain, its key and the CA of its clients (mTLS), as read and checked."""

    cert: bytes
    key: bytes
    client_ca: bytes | None
    expires: datetime.datetime | None
    """When ``cert`` expires (:func:`not_after`)."""
    expiries: dict[str, datetime.datetime | None] = field(default_factory=dict)
    """By file, ``cert`` and (with mTLS) ``client_ca``: when the first of its certificates expires
    (:func:`earliest_not_after`), as ``flowrl_tls_certificate_expiry_timestamp_seconds{file}`` gives it."""


RECHECK_S = 1.0
""":meth:`ServerTLSFiles.changed` looks at the files at most this often."""
SETTLE_S = 1.0
"""Files that fail their check are refused only when they are still the same at a look at least this
long after the first: a renewal writes the certificate, then the key, and a look between the two
sees a mismatched pair."""


class ServerTLSFiles:
    """The server's ``--tls-cert``, ``--tls-key`` and ``--client-ca``, read again when they change:
    cert-manager renews a certificate by swapping a Secret volume's ``..data`` link, and SPIFFE or
    Vault every hour. :meth:`changed` is cheap (an ``os.stat`` of each path, links followed, at most
    once every :data:`RECHECK_S`) and never raises: gRPC calls it on each new connection's handshake.

    New files are checked as at start (:func:`check_key_pair`, :func:`read_certificates`); files
    that fail (a key of another certificate, a file caught half-written by a copy) and are still the
    same at a look :data:`SETTLE_S` or more later (a renewal's second write between the two looks is
    no refusal) are refused with a warning naming them, the files in use serve on, and the next
    change is read again. A
    certificate that has expired, or will within :data:`EXPIRY_WARNING_DAYS`, is warned of at
    start, at each change, and when it crosses either line while served, as :meth:`changed` or
    :meth:`check_expiry` (which the server calls on a timer) first sees it.

    Raises:
        FlowRLError: at start, as :func:`check_key_pair` and :func:`read_certificates` do.
    """

    def __init__(
        self, cert: str | os.PathLike[str], key: str | os.PathLike[str], client_ca: str | os.PathLike[str] = ""
    ) -> None:
        self.paths = {"--tls-cert": cert, "--tls-key": key, **({"--client-ca": client_ca} if client_ca else {})}
        self.rotations = 0
        """Changes of the files taken into use since start."""
        self.refusals = 0
        """Changes of the files refused since start (the files in use serve on)."""
        self._lock = threading.Lock()
        self._looked = time.monotonic()
        self._stamps = self._stat()  # before reading: a change while reading is read again
        self._failing: tuple[tuple[tuple[int, ...] | str, ...], float] | None = None
        """The stamps of files that failed their check, and when they first did (:data:`SETTLE_S`)."""
        self.loaded = self._read()
        warn_if_every_user_may_read(key, "--tls-key")
        self._warned = ""
        self._warn_of_expiry()

    def _stat(self) -> tuple[tuple[int, ...] | str, ...]:
        """What changes with each path's file (through links): its inode, size and time of change."""
        stamps: list[tuple[int, ...] | str] = []
        for path in self.paths.values():
            try:
                st = os.stat(path)
            except OSError as exc:
                stamps.append(exc.strerror or str(exc))
            else:
                stamps.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return tuple(stamps)

    def _read(self) -> ServerTLS:
        cert, key = check_key_pair(self.paths["--tls-cert"], self.paths["--tls-key"])
        ca = self.paths.get("--client-ca")
        client_ca = read_certificates(ca, "--client-ca") if ca else None
        expiries = {"cert": earliest_not_after(cert)}
        if client_ca is not None:
            expiries["client_ca"] = earliest_not_after(client_ca)
        return ServerTLS(cert, key, client_ca, not_after(cert), expiries)

    def _warn_of_expiry(self) -> None:
        """Warn of the certificate in use once as it nears its expiry, and once as it expires."""
        stage = _expiry_stage(self.loaded.expires)
        if stage and stage != self._warned:
            log.warning(expiry_warning(self.loaded.expires, self.paths["--tls-cert"]))
        self._warned = stage

    def check_expiry(self) -> None:
        """Warn of the certificate in use crossing :data:`EXPIRY_WARNING_DAYS` or its expiry, as
        :meth:`changed` does, without looking at the files: a server whose clients keep their
        connections makes no handshake, and :meth:`changed` was never called. Never raises."""
        if not self._lock.acquire(blocking=False):  # changed() is looking, and warns itself
            return
        try:
            self._warn_of_expiry()
        except Exception:
            log.exception("checking the TLS certificate's expiry failed")
        finally:
            self._lock.release()

    def changed(self) -> ServerTLS | None:
        """The files as newly read and checked when they changed since they were last read, else
        None (also when they are refused, or another thread is looking). Never raises."""
        if time.monotonic() - self._looked < RECHECK_S or not self._lock.acquire(blocking=False):
            return None
        try:
            self._looked = time.monotonic()
            stamps = self._stat()
            if stamps == self._stamps:
                self._warn_of_expiry()
                return None
            try:
                new = self._read()
            except FlowRLError as exc:
                if self._stat() != stamps:  # still being written: read once it has settled
                    return None
                now = time.monotonic()
                if self._failing is None or self._failing[0] != stamps:  # maybe between a renewal's writes
                    self._failing = (stamps, now)
                    return None
                if now - self._failing[1] < SETTLE_S:
                    return None
                self._stamps, self._failing = stamps, None
                self.refusals += 1
                log.warning(
                    "TLS files changed but are refused, the files in use serve on until the next change: %s", exc
                )
                return None
            if self._stat() != stamps:  # changed while read: what was read may mix old and new
                return None
            self._stamps, self._failing = stamps, None
            old, self.loaded = self.loaded, new
            parts = {
                "--tls-cert": (old.cert, new.cert),
                "--tls-key": (old.key, new.key),
                "--client-ca": (old.client_ca, new.client_ca),
            }
            changed = [f"{flag} {self.paths[flag]}" for flag, (was, now) in parts.items() if was != now]
            if not changed:  # touched, or rewritten as it was
                return None
            self.rotations += 1
            expires = "an unknown date" if new.expires is None else new.expires.strftime("%Y-%m-%d %H:%M:%S UTC")
            log.info(
                "TLS files changed (%s): new connections get them, connections already open keep theirs; the "
                "certificate expires on %s",
                ", ".join(changed),
                expires,
            )
            self._warned = ""
            self._warn_of_expiry()
            return new
        except Exception:  # gRPC's handshake must go on with the files in use
            log.exception("looking for changed TLS files failed; the files in use serve on")
            return None
        finally:
            self._lock.release()
