"""A client whose certificate an mTLS server refuses (another CA's, or an expired one) was told the
server may be at its --max-connections. A TLS client at the cap reads 'Handshake read failed' (the
connection closed before the server's hello), one whose certificate is refused a bare 'Socket closed'
(after it): the hint names the certificate."""

from __future__ import annotations

import datetime
import socket

import pytest
from tiny_policy import write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.connection import connection_hint
from flowrl_deploy.serve import PolicyServer, ServeConfig

pytest.importorskip("cryptography.x509")
from pki import issue, write_pem

runner = CliRunner()
OBS = "[0, 0, 0]"
CLOSED = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:5: Socket closed"
CUT = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:5: Handshake read failed"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = issue("flowrl test CA", ca=True)
    rogue_key, rogue_cert = issue("rogue CA", ca=True)
    files = {"ca": write_pem(directory, "ca", ca_key, ca_cert)[0]}
    files["server"] = write_pem(directory, "server", *issue("localhost", ca_key, ca_cert.subject))
    files["client"] = write_pem(directory, "client", *issue("robot", ca_key, ca_cert.subject))
    files["rogue"] = write_pem(directory, "rogue", *issue("intruder", rogue_key, rogue_cert.subject))
    expired = issue("robot", ca_key, ca_cert.subject, expires_in=datetime.timedelta(days=-1))
    files["expired"] = write_pem(directory, "expired", *expired)
    files["policy"] = str(write_policy(directory / "policy.onnx"))
    return files


def test_a_closed_socket_after_a_client_certificate_names_the_certificate_not_the_cap():
    hint = connection_hint(CLOSED, "localhost:5", "ca.pem", "client.pem")
    assert "--tls-cert" in hint and "--client-ca" in hint and "expired" in hint
    assert "--max-connections" not in hint
    # a TLS client cut before the server's hello is still told of the cap, certificate or not
    assert "--max-connections" in connection_hint(CUT + " (Socket closed)", "localhost:5", "ca.pem", "client.pem")


def _query(port: int, cert: tuple[str, str], ca: str) -> str:
    tls = ["--tls-ca", ca, "--tls-cert", cert[0], "--tls-key", cert[1]]
    result = runner.invoke(app, ["query", "--server", f"127.0.0.1:{port}", "--obs", OBS, "--timeout", "2", *tls])
    assert result.exit_code == 1 and "UNAVAILABLE" in result.output, result.output
    return result.output


@pytest.mark.parametrize("client", ["rogue", "expired"])
def test_flowrl_query_with_a_refused_client_certificate_is_told_so(pki, client):
    config = ServeConfig(
        pki["policy"],
        port=0,
        grace_s=0,
        tls_cert=pki["server"][0],
        tls_key=pki["server"][1],
        client_ca=pki["ca"],
    )
    with PolicyServer(config).start() as server:
        said = _query(server.port, pki[client], pki["ca"])
        assert "Socket closed" in said and "--client-ca did not sign --tls-cert" in said, said
        assert "--max-connections" not in said


def test_flowrl_query_with_a_good_certificate_at_the_cap_is_told_of_the_cap(pki):
    config = ServeConfig(
        pki["policy"],
        port=0,
        grace_s=0,
        max_connections=1,
        tls_cert=pki["server"][0],
        tls_key=pki["server"][1],
        client_ca=pki["ca"],
    )
    with PolicyServer(config).start() as server, socket.create_connection(("127.0.0.1", server.port)):
        said = _query(server.port, pki["client"], pki["ca"])
    assert "Handshake read failed" in said and "--max-connections" in said, said
