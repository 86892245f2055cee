"""A running server picks up renewed TLS files for new connections (cert-manager rewrites a Secret
volume every ~60 days, SPIFFE and Vault hourly), keeps its certificate when the new files are
refused, and warns of a certificate that has expired or soon will."""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from flowrl_deploy import tls
from flowrl_deploy.client import PolicyClient, ServiceError
from flowrl_deploy.serve import PolicyServer, ServeConfig

pytest.importorskip("cryptography.x509")
from pki import issue, write_pem

OBS = np.zeros(3, np.float32)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """Two CAs (a, b), a server certificate from each, and a client certificate from a."""
    directory = tmp_path_factory.mktemp("pki")
    files = {}
    for ca in "ab":
        ca_key, ca_cert = issue(f"CA {ca}", ca=True)
        files[f"ca_{ca}"] = write_pem(directory, f"ca_{ca}", ca_key, ca_cert)
        files[ca] = write_pem(directory, f"server_{ca}", *issue("localhost", ca_key, ca_cert.subject))
        if ca == "a":
            files["client"] = write_pem(directory, "client", *issue("robot", ca_key, ca_cert.subject))
    return files


@pytest.fixture(autouse=True)
def every_handshake_looks(monkeypatch):
    """The files are looked at on each handshake, not at most once a second, and files that fail
    are refused at the next look (no settle time)."""
    monkeypatch.setattr(tls, "RECHECK_S", 0.0)
    monkeypatch.setattr(tls, "SETTLE_S", 0.0)


def mount(directory: Path, version: int, files: dict[str, str]) -> dict[str, str]:
    """Lay ``files`` (name: source) out as Kubernetes mounts a Secret, and as it renews one: each name
    a link to ``..data/name``, and ``..data`` a link to a folder per version, swapped atomically."""
    folder = directory / f"..v{version}"
    folder.mkdir()
    for name, source in files.items():
        shutil.copy(source, folder / name)
    (directory / "..data_tmp").symlink_to(folder.name)
    os.replace(directory / "..data_tmp", directory / "..data")
    for name in files:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(Path("..data") / name)
    return {name: str(directory / name) for name in files}


def handshakes(target: str, ca: str) -> bool:
    """Whether a new connection trusting only ``ca`` is served (False: its handshake failed)."""
    with PolicyClient(target, tls_ca=ca, timeout_s=2) as client:
        try:
            return client.act(OBS).shape == (2,)
        except ServiceError as exc:
            assert exc.code == grpc.StatusCode.UNAVAILABLE
            return False


def serving(policy_path: Path, cert: str, key: str, **kwargs) -> PolicyServer:
    """A TLS server on 127.0.0.1 (the certificates name it; clients connect to its ``address``), not
    `localhost`: gRPC binds `localhost` on [::1] and 127.0.0.1 at one port and keeps [::1] alone when
    127.0.0.1 has that port taken, and a refused connection would read as a failed handshake."""
    return PolicyServer(
        ServeConfig(str(policy_path), host="127.0.0.1", port=0, tls_cert=cert, tls_key=key, grace_s=0, **kwargs)
    ).start()


def test_a_renewed_certificate_is_served_to_new_connections_without_a_restart(policy_path, pki, tmp_path, caplog):
    caplog.set_level(logging.INFO, "flowrl.serve")
    served = mount(tmp_path, 1, {"tls.crt": pki["a"][0], "tls.key": pki["a"][1]})
    with serving(policy_path, served["tls.crt"], served["tls.key"]) as server:
        target = server.address
        assert not handshakes(target, pki["ca_b"][0])
        with PolicyClient(target, tls_ca=pki["ca_a"][0]) as before:
            assert before.act(OBS).shape == (2,)
            mount(tmp_path, 2, {"tls.crt": pki["b"][0], "tls.key": pki["b"][1]})
            assert handshakes(target, pki["ca_b"][0])
            assert before.act(OBS).shape == (2,)  # an established connection keeps its certificate
        assert not handshakes(target, pki["ca_a"][0])
        exposition = server.servicer.metrics.exposition()
    assert "flowrl_tls_rotations_total 1\n" in exposition
    assert "flowrl_tls_refusals_total 0\n" in exposition
    rotations = [r.getMessage() for r in caplog.records if "TLS files changed" in r.getMessage()]
    assert len(rotations) == 1 and served["tls.crt"] in rotations[0] and "expires on" in rotations[0]


def test_a_renewed_client_ca_is_trusted_by_new_connections(policy_path, pki, tmp_path):
    served = mount(tmp_path, 1, {"tls.crt": pki["a"][0], "tls.key": pki["a"][1], "ca.crt": pki["ca_b"][0]})
    with serving(policy_path, served["tls.crt"], served["tls.key"], client_ca=served["ca.crt"]) as server:
        target = server.address
        robot = {"tls_ca": pki["ca_a"][0], "tls_cert": pki["client"][0], "tls_key": pki["client"][1], "timeout_s": 2}
        with PolicyClient(target, **robot) as client, pytest.raises(ServiceError):
            client.act(OBS)  # its certificate is from CA a, which the server does not trust yet
        mount(tmp_path, 2, {"tls.crt": pki["a"][0], "tls.key": pki["a"][1], "ca.crt": pki["ca_a"][0]})
        with PolicyClient(target, **robot) as client:
            assert client.act(OBS).shape == (2,)


def half(path: str) -> bytes:
    data = Path(path).read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "replaced, why",
    [
        ({"key": lambda pki: Path(pki["client"][1]).read_bytes()}, "the key is another certificate's"),
        ({"cert": lambda pki: half(pki["b"][0])}, "--tls-cert holds no valid PEM certificate"),
        ({"key": lambda pki: b"-----BEGIN PRIVATE KEY-----\n"}, "--tls-key holds no valid PEM private key"),
    ],
    ids=["mismatched key", "half-written certificate", "half-written key"],
)
def test_refused_files_leave_the_old_certificate_serving_until_the_next_change(
    policy_path, pki, tmp_path, caplog, replaced, why
):
    cert, key = str(tmp_path / "tls.crt"), str(tmp_path / "tls.key")
    shutil.copy(pki["a"][0], cert)
    shutil.copy(pki["a"][1], key)
    with serving(policy_path, cert, key) as server:
        target = server.address
        for name, content in replaced.items():  # written in place, as a non-atomic copy does
            Path({"cert": cert, "key": key}[name]).write_bytes(content(pki))
        assert handshakes(target, pki["ca_a"][0])
        assert not handshakes(target, pki["ca_b"][0])
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings  # once per change, not once per handshake
        assert why in warnings[0] and cert in warnings[0] and key in warnings[0]
        assert "flowrl_tls_refusals_total 1\n" in server.servicer.metrics.exposition()
        shutil.copy(pki["b"][0], cert)  # the copy completes: read again
        shutil.copy(pki["b"][1], key)
        assert handshakes(target, pki["ca_b"][0])
        assert "flowrl_tls_rotations_total 1\n" in server.servicer.metrics.exposition()


@pytest.mark.parametrize(
    "expires_in, warning",
    [
        (datetime.timedelta(days=-2), "expired on "),
        (datetime.timedelta(days=3, hours=1), "expires in 3 days"),
        (datetime.timedelta(days=30), None),
    ],
    ids=["expired", "expiring", "valid"],
)
def test_a_certificate_expired_or_expiring_at_start_is_warned_about_and_served(
    policy_path, tmp_path, caplog, expires_in, warning
):
    ca_key, ca_cert = issue("CA", ca=True)
    ca = write_pem(tmp_path, "ca", ca_key, ca_cert)[0]
    cert, key = write_pem(tmp_path, "server", *issue("localhost", ca_key, ca_cert.subject, expires_in=expires_in))
    with serving(policy_path, cert, key) as server:
        # a client that verifies refuses an expired certificate; the server still serves
        assert handshakes(server.address, ca) == (warning != "expired on ")
        exposition = server.servicer.metrics.exposition()
    expiry = (datetime.datetime.now(datetime.timezone.utc) + expires_in).timestamp()
    gauge = next(line for line in exposition.splitlines() if line.startswith("flowrl_tls_certificate_expiry_seconds "))
    assert abs(float(gauge.split()[1]) - expiry) < 60
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "--tls-cert" in r.getMessage()
    ]
    if warning is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warning in warnings[0] and cert in warnings[0]


def test_the_expiry_of_the_served_chain_and_of_the_client_ca_are_exported(policy_path, tmp_path):
    """Only the served certificate's own expiry was exported: not an intermediate's, nor --client-ca's,
    whose expiry makes every client certificate fail to verify."""
    ca_key, ca_cert = issue("CA", ca=True, expires_in=datetime.timedelta(days=20))
    ca = write_pem(tmp_path, "ca", ca_key, ca_cert)[0]
    cert, key = write_pem(tmp_path, "server", *issue("localhost", ca_key, ca_cert.subject))
    Path(cert).write_bytes(Path(cert).read_bytes() + Path(ca).read_bytes())  # the chain: leaf (30 days), CA (20)
    client_ca_key, client_ca = issue("client CA", ca=True, expires_in=datetime.timedelta(days=10))
    clients = write_pem(tmp_path, "client_ca", client_ca_key, client_ca)[0]
    with serving(policy_path, cert, key, client_ca=clients) as server:
        exposition = server.servicer.metrics.exposition()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in exposition.splitlines()
        if line.startswith("flowrl_tls_certificate_expiry")
    }
    now = datetime.datetime.now(datetime.timezone.utc)
    for name, days in (
        ('flowrl_tls_certificate_expiry_timestamp_seconds{file="cert"}', 20),
        ('flowrl_tls_certificate_expiry_timestamp_seconds{file="client_ca"}', 10),
        ("flowrl_tls_certificate_expiry_seconds", 30),  # the old name: the served certificate's own, deprecated
    ):
        assert abs(values.pop(name) - (now + datetime.timedelta(days=days)).timestamp()) < 60, name
    assert values == {}
    assert "# TYPE flowrl_tls_certificate_expiry_timestamp_seconds gauge" in exposition


def test_plaintext_servers_show_no_tls_figures(server):
    assert "flowrl_tls" not in server.servicer.metrics.exposition()


def test_a_certificate_crossing_its_warning_line_while_served_is_warned_of_without_a_new_connection(
    policy_path, pki, caplog, monkeypatch, tmp_path
):
    """The warning came only from the handshake of a new connection: a fleet holding its streams never
    saw it. ``flowrl serve`` checks on a timer (serve_forever), and a metrics scrape checks too."""
    import signal

    from flowrl_deploy.serve import run as run_module
    from flowrl_deploy.serve import serve_forever

    cert, key = pki["a"]
    config = ServeConfig(str(policy_path), port=0, tls_cert=cert, tls_key=key, grace_s=0)

    def warned() -> list[str]:
        return [
            r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "expires in" in r.getMessage()
        ]

    with PolicyServer(config).start() as server:
        assert warned() == []  # 30 days left
        monkeypatch.setattr(tls, "EXPIRY_WARNING_DAYS", 31)
        server.servicer.metrics.exposition()
        assert len(warned()) == 1
    caplog.clear()
    monkeypatch.setattr(tls, "EXPIRY_WARNING_DAYS", 7)
    monkeypatch.setattr(run_module, "EXPIRY_CHECK_S", 0.1)

    def then_nearing(server: PolicyServer) -> None:
        def cross_then_stop() -> None:
            monkeypatch.setattr(tls, "EXPIRY_WARNING_DAYS", 31)
            deadline = time.monotonic() + 10
            while not warned() and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=cross_then_stop, daemon=True).start()

    serve_forever(config, on_ready=then_nearing)
    assert len(warned()) == 1
