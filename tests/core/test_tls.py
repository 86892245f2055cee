"""TLS files are checked before gRPC sees them, and a bad one is named with its flag: gRPC would
only report a failed handshake or bind (or abort the process for a certificate without its key)."""

from __future__ import annotations

import datetime
import logging
import os
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from flowrl_deploy import tls
from flowrl_deploy.client import PolicyClient
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.tls import (
    ServerTLSFiles,
    check_key_pair,
    earliest_not_after,
    expiry_warning,
    not_after,
    read_certificates,
)

pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pki import issue, write_pem


@pytest.fixture(scope="module")
def pem(tmp_path_factory) -> dict[str, str]:
    """A CA, a certificate it issued with its key, another key (EC, and RSA for the EC certificate),
    garbage, a truncated certificate, an encrypted key, and the CA and certificate in one bundle."""
    directory = tmp_path_factory.mktemp("tls")
    ca_key, ca_cert = issue("flowrl test CA", ca=True)
    key, cert = issue("robot", ca_key, ca_cert.subject)
    files = dict(zip(("cert", "key"), write_pem(directory, "robot", key, cert), strict=True))
    files["ca"] = write_pem(directory, "ca", ca_key, ca_cert)[0]
    files["other_key"] = write_pem(directory, "other", *issue("other"))[1]
    text = Path(files["cert"]).read_text()
    for name, content in {
        "garbage": "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
        "truncated": text[: len(text) // 2],
        "bundle": Path(files["ca"]).read_text() + text,
        "annotated": "# Issuer: O=Zürich Robotics\n" + Path(files["ca"]).read_text(),  # text outside the block
    }.items():
        (directory / f"{name}.pem").write_text(content)
        files[name] = str(directory / f"{name}.pem")
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    (directory / "encrypted.key").write_bytes(encrypted)
    files["encrypted"] = str(directory / "encrypted.key")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (directory / "rsa.key").write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    files["rsa_key"] = str(directory / "rsa.key")
    return files


class TestCertificates:
    @pytest.mark.parametrize("name", ["ca", "cert", "bundle", "annotated"])
    def test_certificates_and_bundles_are_read(self, pem, name):
        assert read_certificates(pem[name], "--tls-ca") == Path(pem[name]).read_bytes()

    @pytest.mark.parametrize(
        ("name", "message"),
        [
            ("garbage", "holds no valid PEM certificate"),
            ("truncated", "holds no valid PEM certificate"),
            ("key", "holds a private key, not a certificate"),
        ],
    )
    def test_a_file_without_a_certificate_is_named_with_its_flag(self, pem, name, message):
        with pytest.raises(FlowRLError, match=f"^{re.escape(f'--client-ca {pem[name]} {message}')}$"):
            read_certificates(pem[name], "--client-ca")

    def test_a_device_is_refused_rather_than_read_forever(self):
        with pytest.raises(FlowRLError, match=r"^--tls-ca /dev/zero is not a regular file$"):
            read_certificates("/dev/zero", "--tls-ca")

    def test_a_fifo_is_refused_rather_than_waited_on(self, tmp_path):
        os.mkfifo(tmp_path / "fifo")
        with pytest.raises(FlowRLError, match="is not a regular file"):
            read_certificates(str(tmp_path / "fifo"), "--tls-ca")


class TestKeyPair:
    def test_a_matching_pair_gives_its_bytes(self, pem):
        assert check_key_pair(pem["cert"], pem["key"]) == (
            Path(pem["cert"]).read_bytes(),
            Path(pem["key"]).read_bytes(),
        )

    @pytest.mark.parametrize(
        ("cert", "key", "why"),
        [
            ("cert", "other_key", "the key is another certificate's"),
            ("cert", "rsa_key", "the key is another certificate's (its key type differs from the certificate's)"),
            ("key", "cert", "they are swapped"),
            ("key", "other_key", "--tls-cert holds a private key, not a certificate"),
            ("garbage", "key", "--tls-cert holds no valid PEM certificate"),
            ("truncated", "key", "--tls-cert holds no valid PEM certificate"),
            ("cert", "garbage", "--tls-key holds no valid PEM private key"),
            ("cert", "encrypted", "--tls-key is encrypted, and gRPC needs an unencrypted key"),  # OpenSSL prompted
        ],
    )
    def test_a_bad_pair_names_the_flags_files_and_fault(self, pem, cert, key, why):
        with pytest.raises(FlowRLError) as info:
            check_key_pair(pem[cert], pem[key])
        assert str(info.value) == (
            f"--tls-cert {pem[cert]} and --tls-key {pem[key]} are not a certificate and its private key: {why}"
        )

    @pytest.mark.parametrize("given", ["cert", "key"])
    def test_one_without_the_other_is_refused(self, pem, given):
        cert, key = (pem["cert"], "") if given == "cert" else ("", pem["key"])
        with pytest.raises(FlowRLError, match="--tls-cert and --tls-key go together"):
            check_key_pair(cert, key)


class TestClientCredentials:
    """The SDK checks the files when it opens the channel, before any call, naming its arguments
    (the commands, which pass target_name="--server", their flags)."""

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"tls_ca": "garbage"}, "tls_ca {garbage} holds no valid PEM certificate"),
            ({"tls_ca": "key"}, "tls_ca {key} holds a private key, not a certificate"),
            ({"tls_ca": "missing"}, "cannot read tls_ca {missing}: No such file or directory"),
            ({"tls_cert": "cert", "tls_key": "other_key"}, "tls_key {other_key} are not a certificate and its"),
            ({"tls_cert": "key", "tls_key": "cert"}, "private key: they are swapped"),
            ({"tls_cert": "cert", "tls_key": "garbage"}, "private key: tls_key holds no valid PEM private key"),
            ({"tls_cert": "cert"}, "tls_cert and tls_key go together: tls_cert was given without tls_key"),
            ({"tls_key": "key"}, "tls_key was given without tls_cert"),  # gRPC aborts the process
        ],
    )
    def test_a_bad_file_is_refused_when_the_client_is_made(self, pem, kwargs, message):
        pem = {**pem, "missing": "/nonexistent/ca.pem"}
        with pytest.raises(FlowRLError) as info:
            PolicyClient("127.0.0.1:1", **{arg: pem[name] for arg, name in kwargs.items()})
        assert message.format(**pem) in str(info.value) and "--tls" not in str(info.value)
        with pytest.raises(FlowRLError) as info:  # as the commands make it
            PolicyClient("127.0.0.1:1", target_name="--server", **{arg: pem[name] for arg, name in kwargs.items()})
        flags = message.replace("tls_ca", "--tls-ca").replace("tls_cert", "--tls-cert").replace("tls_key", "--tls-key")
        assert flags.format(**pem) in str(info.value)

    def test_good_files_make_a_client(self, pem):
        with PolicyClient("127.0.0.1:1", tls_ca=pem["ca"], tls_cert=pem["cert"], tls_key=pem["key"]) as client:
            assert client.target == "127.0.0.1:1"


class TestExpiry:
    """The standard library reads the dates of CA certificates only; the served one's is read from its DER."""

    @pytest.mark.parametrize(
        "expires_in",
        [
            datetime.timedelta(days=30),
            datetime.timedelta(days=-3),
            datetime.timedelta(days=365 * 40),
            datetime.datetime(1999, 12, 31, tzinfo=datetime.timezone.utc)
            - datetime.datetime.now(datetime.timezone.utc),
        ],
        ids=["UTCTime", "expired", "GeneralizedTime (2050 on)", "UTCTime before 2000"],
    )
    def test_the_expiry_is_the_certificates_own(self, tmp_path, expires_in):
        ca_key, ca_cert = issue("CA", ca=True)
        key, cert = issue("localhost", ca_key, ca_cert.subject, expires_in=expires_in)
        path = write_pem(tmp_path, "server", key, cert)[0]
        chain = Path(path).read_bytes() + Path(write_pem(tmp_path, "ca", ca_key, ca_cert)[0]).read_bytes()
        assert not_after(chain) == cert.not_valid_after_utc.replace(microsecond=0)  # the first of a chain

    def test_a_chain_and_a_ca_bundle_expire_with_their_earliest_certificate(self, tmp_path):
        """An intermediate (or one CA of a bundle) that expires first ends the chain's use with it; only
        the served certificate's own expiry was exported."""
        root_key, root = issue("root", ca=True, expires_in=datetime.timedelta(days=90))
        middle_key, middle = issue("middle", root_key, root.subject, ca=True, expires_in=datetime.timedelta(days=5))
        key, leaf = issue("localhost", middle_key, middle.subject, expires_in=datetime.timedelta(days=30))
        chain = b"".join(
            Path(write_pem(tmp_path, stem, k, c)[0]).read_bytes()
            for stem, k, c in (("leaf", key, leaf), ("middle", middle_key, middle), ("root", root_key, root))
        )
        assert not_after(chain) == leaf.not_valid_after_utc.replace(microsecond=0)
        assert earliest_not_after(chain) == middle.not_valid_after_utc.replace(microsecond=0)
        assert earliest_not_after(b"no certificate") is None

    def test_the_server_reads_the_earliest_expiry_of_its_chain_and_of_its_client_ca(self, tmp_path):
        root_key, root = issue("root", ca=True, expires_in=datetime.timedelta(days=90))
        middle_key, middle = issue("middle", root_key, root.subject, ca=True, expires_in=datetime.timedelta(days=60))
        cert, key = write_pem(tmp_path, "leaf", *issue("localhost", middle_key, middle.subject))
        Path(cert).write_bytes(
            Path(cert).read_bytes() + Path(write_pem(tmp_path, "m", middle_key, middle)[0]).read_bytes()
        )
        old_key, old = issue("old CA", ca=True, expires_in=datetime.timedelta(days=3))
        bundle = tmp_path / "clients.pem"
        bundle.write_bytes(
            b"".join(
                Path(write_pem(tmp_path, stem, k, c)[0]).read_bytes()
                for stem, k, c in (("root", root_key, root), ("old", old_key, old))
            )
        )
        loaded = ServerTLSFiles(cert, key, bundle).loaded
        assert loaded.expiries == {
            "cert": loaded.expires,  # the leaf expires first (30 days)
            "client_ca": old.not_valid_after_utc.replace(microsecond=0),
        }
        assert ServerTLSFiles(cert, key).loaded.expiries == {"cert": loaded.expires}

    @pytest.mark.parametrize("name", ["garbage", "key"])
    def test_no_certificate_has_no_expiry(self, pem, name):
        assert not_after(Path(pem[name]).read_bytes()) is None

    @pytest.mark.parametrize(
        ("left", "warning"),
        [
            (datetime.timedelta(days=-1), "--tls-cert c.pem expired on 2030-01-01 00:00:00 UTC: clients that verify"),
            (datetime.timedelta(0), "--tls-cert c.pem expired on"),
            (datetime.timedelta(hours=5), "--tls-cert c.pem expires in less than a day (2030-01-01 00:00:00 UTC)"),
            (datetime.timedelta(days=1, hours=1), "expires in 1 day ("),
            (datetime.timedelta(days=6, hours=23), "expires in 6 days ("),
            (datetime.timedelta(days=7), ""),
        ],
    )
    def test_expired_and_expiring_certificates_are_warned_of(self, left, warning):
        expires = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
        said = expiry_warning(expires, "c.pem", now=expires - left)
        assert (said.startswith(warning) or f" {warning}" in said) if warning else said == ""

    def test_an_unknown_expiry_is_not_warned_of(self):
        assert expiry_warning(None, "c.pem") == ""


class TestServerFiles:
    """The server's files, read again on change; gRPC calls :meth:`ServerTLSFiles.changed` on each handshake."""

    @pytest.fixture
    def served(self, pem, tmp_path, monkeypatch):
        monkeypatch.setattr(tls, "RECHECK_S", 0.0)
        monkeypatch.setattr(tls, "SETTLE_S", 0.0)  # refused files are refused at the second look
        for name in ("cert", "key"):
            shutil.copy(pem[name], tmp_path / name)
        return ServerTLSFiles(tmp_path / "cert", tmp_path / "key")

    def test_unchanged_or_rewritten_as_they_were_is_no_change(self, served, tmp_path):
        assert served.changed() is None
        (tmp_path / "cert").write_bytes((tmp_path / "cert").read_bytes())  # a new time of change, the same bytes
        assert served.changed() is None and served.rotations == 0

    def test_a_file_gone_is_refused_once_not_at_every_handshake(self, served, tmp_path, caplog):
        (tmp_path / "key").unlink()
        assert [served.changed(), served.changed()] == [None, None]
        assert served.refusals == 1 and served.loaded.key
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
            "TLS files changed but are refused, the files in use serve on until the next change: cannot read "
            f"--tls-key {tmp_path / 'key'}: No such file or directory"
        ]

    def test_a_certificate_then_its_key_replaced_is_a_renewal_not_a_refusal(
        self, served, pem, tmp_path, caplog, monkeypatch
    ):
        """A renewal writes the certificate, then the key (certbot's links, `cp new.crt …; cp new.key …`):
        a handshake between the two read a mismatched pair, counted a refusal and logged a WARNING,
        which an alert on flowrl_tls_refusals_total took for a fault."""
        monkeypatch.setattr(tls, "SETTLE_S", 3600.0)
        key, cert = issue("renewed")
        new_cert, new_key = write_pem(tmp_path, "renewed", key, cert)
        shutil.copy(new_cert, tmp_path / "cert")
        assert served.changed() is None  # the old key with the new certificate: settling
        shutil.copy(new_key, tmp_path / "key")
        assert served.changed() is not None
        assert (served.rotations, served.refusals) == (1, 0)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    def test_a_pair_still_mismatched_after_settling_is_refused(self, served, pem, tmp_path, caplog):
        shutil.copy(pem["other_key"], tmp_path / "key")
        assert served.changed() is None and served.refusals == 0  # settling
        assert served.changed() is None and served.refusals == 1  # still so at the next look: refused
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "the key is another certificate's" in warnings[0]

    def test_a_refused_change_is_counted_once_however_many_looks(self, served, pem, tmp_path, caplog):
        """A refusal that forgot the refused files took them for a new change at the next look, and
        refused them again a SETTLE_S later: a WARNING and a flowrl_tls_refusals_total count about once
        a second, at every handshake, for one bad change."""
        shutil.copy(pem["other_key"], tmp_path / "key")
        assert [served.changed() for _ in range(6)] == [None] * 6
        assert served.refusals == 1
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1

    def test_a_renewal_keeping_size_and_mtime_is_taken(self, tmp_path, monkeypatch):
        """`cp -p`, `rsync -t`, `install -p` and tar keep a file's time of modification; a renewal of
        the same key type is often the same size: the new file is seen by its inode and ctime."""
        monkeypatch.setattr(tls, "RECHECK_S", 0.0)
        old_cert, old_key = write_pem(tmp_path, "old", *issue("robot"))
        for name, path in (("cert", old_cert), ("key", old_key)):
            shutil.copy(path, tmp_path / name)
        served = ServerTLSFiles(tmp_path / "cert", tmp_path / "key")
        sizes = [os.stat(tmp_path / name).st_size for name in ("cert", "key")]
        for attempt in range(100):  # an ECDSA signature and a serial number vary in length by a byte
            new = write_pem(tmp_path, f"new{attempt}", *issue("robot"))
            if [os.stat(path).st_size for path in new] == sizes:
                break
        else:
            pytest.fail("no renewal of the same size in 100 tries")
        for name, path in zip(("cert", "key"), new, strict=True):
            before = os.stat(tmp_path / name)
            shutil.copy(path, tmp_path / f"{name}.new")
            os.utime(tmp_path / f"{name}.new", ns=(before.st_atime_ns, before.st_mtime_ns))
            os.replace(tmp_path / f"{name}.new", tmp_path / name)
            after = os.stat(tmp_path / name)
            assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
        assert served.changed() is not None
        assert (served.rotations, served.loaded.cert) == (1, Path(new[0]).read_bytes())

    def test_an_error_while_looking_is_logged_not_raised_into_grpc(self, served, tmp_path, caplog, monkeypatch):
        def broken():
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(served, "_read", broken)
        (tmp_path / "cert").write_bytes(b"changed")
        assert served.changed() is None
        assert "looking for changed TLS files failed" in caplog.text and "disk on fire" in caplog.text

    def test_the_files_are_looked_at_no_more_than_once_a_recheck(self, served, tmp_path, monkeypatch):
        monkeypatch.setattr(tls, "RECHECK_S", 3600.0)
        (tmp_path / "key").unlink()
        assert served.changed() is None and served.refusals == 0

    def test_a_certificate_crossing_a_line_is_warned_of_without_a_handshake(self, served, caplog, monkeypatch):
        """A fleet holding its streams makes no new handshake, so changed() never ran and never warned."""
        served.check_expiry()
        assert not caplog.records  # 30 days left
        monkeypatch.setattr(tls, "EXPIRY_WARNING_DAYS", 31)
        served.check_expiry()
        served.check_expiry()
        assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
            f"--tls-cert {served.paths['--tls-cert']} expires in 29 days"
        ]

    @pytest.fixture
    def clock(self, monkeypatch):
        """tls's monotonic clock, moved on by hand: ``clock(s)`` moves it ``s`` seconds on."""
        now = [time.monotonic()]

        def move(seconds: float) -> None:
            now[0] += seconds

        monkeypatch.setattr(tls, "time", SimpleNamespace(monotonic=lambda: now[0]))
        return move

    def test_a_look_waits_a_recheck_after_the_last_look_not_after_the_start(self, served, tmp_path, clock, monkeypatch):
        monkeypatch.setattr(tls, "RECHECK_S", 10.0)
        clock(20)
        assert served.changed() is None  # looked: unchanged
        new_cert, new_key = write_pem(tmp_path, "renewed", *issue("renewed"))
        shutil.copy(new_cert, tmp_path / "cert")
        shutil.copy(new_key, tmp_path / "key")
        clock(5)
        assert served.changed() is None and served.rotations == 0  # not looked at: 5 s after the last look
        clock(5)
        assert served.changed() is not None and served.rotations == 1

    def test_a_second_broken_state_settles_before_it_is_refused(self, served, pem, tmp_path, clock, monkeypatch):
        """A renewal's files caught twice between its writes, each time otherwise, are two states, each
        given SETTLE_S to become a good pair: the second was refused at first sight."""
        monkeypatch.setattr(tls, "SETTLE_S", 2.0)
        shutil.copy(pem["other_key"], tmp_path / "key")
        assert served.changed() is None  # state A: settling
        clock(3)
        shutil.copy(pem["rsa_key"], tmp_path / "key")  # state B, at first sight
        assert served.changed() is None and served.refusals == 0
        clock(3)
        assert served.changed() is None and served.refusals == 1  # B, settled: refused

    def test_files_changed_while_read_are_read_again(self, served, tmp_path, monkeypatch):
        """What was read may mix the old and the new files: it is dropped, and the next look reads them."""
        new_cert, new_key = write_pem(tmp_path, "renewed", *issue("renewed"))
        shutil.copy(new_cert, tmp_path / "cert")
        shutil.copy(new_key, tmp_path / "key")
        read, rewritten = served._read, []

        def read_while_rewritten():
            files = read()
            if not rewritten:  # the key rewritten (its last bytes) during the read
                rewritten.append(True)
                (tmp_path / "key").write_bytes(Path(new_key).read_bytes())
            return files

        monkeypatch.setattr(served, "_read", read_while_rewritten)
        assert served.changed() is None and served.rotations == 0
        assert served.changed() is not None and served.rotations == 1

    def test_a_renewal_to_another_expiring_certificate_is_warned_of(self, served, tmp_path, caplog, monkeypatch):
        """Each certificate taken into use is warned of once: an expiring one renewed with another as
        near its end (a renewal job that failed to get a fresh one) was warned of no more."""
        monkeypatch.setattr(tls, "EXPIRY_WARNING_DAYS", 31)
        served.check_expiry()
        new_cert, new_key = write_pem(tmp_path, "renewed", *issue("renewed"))
        shutil.copy(new_cert, tmp_path / "cert")
        shutil.copy(new_key, tmp_path / "key")
        assert served.changed() is not None
        path = served.paths["--tls-cert"]
        warnings = [r.getMessage().split(" (")[0] for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == [f"--tls-cert {path} expires in 29 days"] * 2

    def test_a_served_certificate_is_warned_of_again_when_it_expires(self, served, caplog, monkeypatch):
        """The 7-day warning and the expired one: a certificate served on past its expiry is warned of as
        it expires, once."""
        monkeypatch.setattr(tls, "EXPIRY_WARNING_DAYS", 31)
        served.check_expiry()
        expires = served.loaded.expires

        class Expired(datetime.datetime):  # the clock at the certificate's expiry
            @classmethod
            def now(cls, tz=None):
                return expires

        monkeypatch.setattr(tls.datetime, "datetime", Expired)
        served.check_expiry()
        served.check_expiry()
        path = served.paths["--tls-cert"]
        said = [r.getMessage() for r in caplog.records]
        assert [message.split(" (")[0] for message in said[:1]] == [f"--tls-cert {path} expires in 29 days"]
        assert said[1:] == [
            f"--tls-cert {path} expired on {expires:%Y-%m-%d %H:%M:%S} UTC: clients that verify the server will "
            "refuse it"
        ]

    def test_a_served_certificate_nearing_its_expiry_is_warned_of_once(self, served, caplog, monkeypatch):
        assert served.changed() is None and not caplog.records  # 30 days left
        monkeypatch.setattr(tls, "EXPIRY_WARNING_DAYS", 31)
        assert [served.changed(), served.changed()] == [None, None]
        assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
            f"--tls-cert {served.paths['--tls-cert']} expires in 29 days"
        ]
