"""A failed connection's hint names its cause: a CA that did not sign the server's certificate, an
expired certificate, TLS against a plaintext server, or a port that does not speak gRPC (the
metrics port). Each used to suggest client certificates or --tls-ca whatever the cause."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import threading

import pytest
from loading_server import loading_server
from tiny_policy import write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.connection import DEFAULT_SERVER, connection_hint
from flowrl_deploy.serve import PolicyServer, ServeConfig

pytest.importorskip("cryptography.x509")
from pki import issue, write_pem

runner = CliRunner()
OBS = "[0.1, 0.2, 0.3]"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = issue("flowrl test CA", ca=True)
    files = {"ca": write_pem(directory, "ca", ca_key, ca_cert)[0]}
    files["rogue_ca"] = write_pem(directory, "rogue", *issue("rogue CA", ca=True))[0]
    files["server"] = write_pem(directory, "server", *issue("localhost", ca_key, ca_cert.subject))
    expired = issue("localhost", ca_key, ca_cert.subject, expires_in=datetime.timedelta(days=-1))
    files["expired"] = write_pem(directory, "expired", *expired)
    files["policy"] = str(write_policy(directory / "policy.onnx"))
    return files


def _query(server: str, *tls: str):
    result = runner.invoke(app, ["query", "--server", server, "--obs", OBS, "--timeout", "2", *tls])
    assert result.exit_code == 1, result.output
    assert "UNAVAILABLE" in result.output and "Traceback" not in result.output
    return result.output


def _tls_server(pki, certificate: str):
    """A TLS server on 127.0.0.1 (its certificate names it), not `localhost`: gRPC binds `localhost` on
    [::1] and 127.0.0.1 at one port, keeps [::1] alone when 127.0.0.1 has that port taken, and a client
    that tried 127.0.0.1 last read 'Connection refused' instead of the TLS failure these tests look for."""
    cert, key = pki[certificate]
    config = ServeConfig(pki["policy"], host="127.0.0.1", port=0, tls_cert=cert, tls_key=key, grace_s=0)
    return PolicyServer(config).start()


def test_a_ca_that_did_not_sign_the_servers_certificate_is_named(pki):
    with _tls_server(pki, "server") as server:
        output = _query(server.address, "--tls-ca", pki["rogue_ca"])
    assert "CERTIFICATE_VERIFY_FAILED" in output and "client certificates" not in output
    assert "the server's certificate is not signed by the CA given with --tls-ca" in output


def test_tls_without_a_ca_says_to_pass_the_ca_that_signed_the_servers_certificate(pki):
    """A client certificate alone turns TLS on, checked against this machine's CAs."""
    cert, key = pki["server"]
    with _tls_server(pki, "server") as server:
        output = _query(server.address, "--tls-cert", cert, "--tls-key", key)
    assert "CERTIFICATE_VERIFY_FAILED" in output
    assert "the server's certificate is not signed by a CA this machine trusts: pass that CA with --tls-ca" in output


def test_an_expired_server_certificate_is_named(pki):
    with _tls_server(pki, "expired") as server:
        output = _query(server.address, "--tls-ca", pki["ca"])
    assert "client certificates" not in output and "not signed" not in output
    assert "the server's certificate has expired" in output


def test_tls_against_a_plaintext_server_says_to_drop_tls(pki):
    with PolicyServer(ServeConfig(pki["policy"], port=0, grace_s=0)).start() as server:
        output = _query(server.address, "--tls-ca", pki["ca"])
    assert "client certificates" not in output
    assert "the server does not use TLS: drop --tls-ca" in output


def test_the_metrics_port_is_named_not_tls(pki):
    with PolicyServer(ServeConfig(pki["policy"], port=0, metrics_port=0, grace_s=0)).start() as server:
        output = _query(f"127.0.0.1:{server.metrics_port}")
    assert "pass --tls-ca" not in output
    assert "that port does not answer gRPC (is it the server's --metrics-port?)" in output


@pytest.fixture
def http_server():
    """A real HTTP server: a TLS client's hello gets 'HTTP/1.0 400' back, a failed handshake."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join(timeout=5)
    httpd.server_close()


@pytest.mark.parametrize("verbosity", [None, "INFO"])
def test_grpc_core_info_lines_stay_off_the_clis_stderr_unless_the_user_asks(pki, http_server, verbosity):
    """gRPC's 'I1126 ... ssl_transport_security.cc:2563] Handshake failed ...' repeated the error line
    and broke log parsing; a GRPC_VERBOSITY of the user's own still shows it."""
    env = {k: v for k, v in os.environ.items() if k not in ("GRPC_VERBOSITY", "GRPC_TRACE")}
    if verbosity is not None:
        env["GRPC_VERBOSITY"] = verbosity
    command = ["query", "--server", http_server, "--obs", OBS, "--timeout", "2", "--tls-ca", pki["ca"]]
    result = subprocess.run(
        [sys.executable, "-m", "flowrl_deploy.cli", *command], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 1 and "WRONG_VERSION_NUMBER" in result.stderr, result.stderr
    assert ("Handshake failed" in result.stderr) == (verbosity == "INFO"), result.stderr
    if verbosity is None:
        assert result.stderr.startswith("error: UNAVAILABLE") and len(result.stderr.splitlines()) == 1


def test_a_server_still_loading_gets_its_own_message_without_a_tls_hint(pki, monkeypatch):
    """The server's own UNAVAILABLE (warm-up) was followed by '(if the server uses TLS, pass --tls-ca)'."""
    with loading_server(pki["policy"], monkeypatch) as (server, _):
        output = _query(server.address)
    assert "the model is still loading" in output
    assert "--tls-ca" not in output and "client certificates" not in output


@pytest.mark.parametrize(
    "details",
    [
        "the model is still loading; retry when health reports SERVING",  # the server's own answer
        "Stream removed (Socket closed)",  # a connection lost after the server had answered
        "Cancelling all calls",  # the end of a graceful stop's grace period
    ],
)
def test_no_tls_hint_once_the_server_has_answered(details):
    assert connection_hint(details, "localhost:50051", "", "") == ""
    assert connection_hint(details, "localhost:50051", "ca.pem", "") == ""


def test_a_connection_that_failed_before_any_answer_still_hints_at_tls():
    """A plaintext client's hello, closed by a TLS server: the same words as any closed socket."""
    details = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:5: Socket closed"
    assert connection_hint(details, "localhost:5", "", "").startswith("if the server uses TLS, pass --tls-ca")
    assert "--client-ca" in connection_hint(details, "localhost:5", "ca.pem", "")


# What gRPC's Windows ConnectEx reports for WSAECONNREFUSED (10061). Since grpc/grpc PR #33502 (2023)
# src/core/lib/iomgr/error.cc grpc_wsa_error writes 'ConnectEx: Connection refused (<FormatMessage
# text> -- 10061)', which the Linux words already match; the text alone is how tcp_client_windows
# logged it (grpc/grpc #4649), and older cores gave it as "os_error" with "wsa_error":10061 (grpc/grpc
# #12595), where only the code survives a Windows in another language.
_WINDOWS_REFUSED = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:50051: "


@pytest.mark.parametrize(
    "cause",
    [
        "ConnectEx: Connection refused (No connection could be made because the target machine actively "
        "refused it.\r\n -- 10061)",
        "No connection could be made because the target machine actively refused it.",
        '{"os_error":"No connection could be made ...\\r\\n","syscall":"ConnectEx","wsa_error":10061}',
        '{"os_error":"Es konnte keine Verbindung hergestellt werden ...","wsa_error":10061}',
    ],
)
def test_a_connection_refused_on_windows_hints_at_the_server_not_at_tls(cause):
    hint = connection_hint(_WINDOWS_REFUSED + cause, "localhost:50051", "", "")
    assert hint.startswith("nothing listens at that port on this machine"), hint


def test_a_port_numbered_10061_is_not_taken_for_windows_connection_refused():
    details = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:10061: Socket closed"
    assert connection_hint(details, "localhost:10061", "", "").startswith("if the server uses TLS, pass --tls-ca")


_CLOSED = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:5: Socket closed"


def test_a_socket_closed_at_once_also_names_the_servers_connection_cap():
    """A server at its --max-connections closes a new connection at once, and a plaintext client reads
    the same words as from a TLS server ('Socket closed'): the hint named TLS alone."""
    hint = connection_hint(_CLOSED, "localhost:5", "", "")
    assert hint.startswith("if the server uses TLS, pass --tls-ca") and "--max-connections" in hint
    assert "--client-ca" in connection_hint(_CLOSED, "localhost:5", "ca.pem", "")
    assert "--max-connections" in connection_hint(_CLOSED, "localhost:5", "ca.pem", "")
    # a client with a certificate: the cap cuts its handshake before the server's hello (CUT_HANDSHAKE),
    # so a bare 'Socket closed' is its certificate refused (tests/cli/test_mtls_refused_hint.py)
    assert "--max-connections" not in connection_hint(_CLOSED, "localhost:5", "ca.pem", "client.pem")


def test_a_tls_handshake_cut_at_once_names_the_connection_cap_not_client_certificates():
    """A TLS client's connection closed before the server's hello: gRPC says 'Handshake read failed'."""
    details = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:5: Handshake read failed"
    hint = connection_hint(details + " (Socket closed)", "localhost:5", "ca.pem", "")
    assert "--max-connections" in hint and "client certificates" not in hint


def test_a_client_beyond_the_servers_max_connections_is_told_of_the_cap(pki):
    import socket

    config = ServeConfig(pki["policy"], port=0, max_connections=1, grace_s=0)
    with PolicyServer(config).start() as server, socket.create_connection(("127.0.0.1", server.port)):
        result = runner.invoke(app, ["query", "--server", server.address, "--obs", OBS, "--timeout", "2"])
    assert result.exit_code == 1 and "Socket closed" in result.output
    assert "--max-connections" in result.output


def _ipv6_refused(port: int) -> str:
    """gRPC's error when its last try was localhost's IPv6 address, [::1], and nothing listened there."""
    return (
        "failed to connect to all addresses; last error: UNKNOWN: ipv6:%5B::1%5D:"
        f"{port}: Failed to connect to remote host: Connection refused"
    )


def test_a_refused_ipv6_localhost_is_not_read_as_no_server_when_127_0_0_1_answers(pki):
    """gRPC tries both of localhost's addresses, and a server on 127.0.0.1 (flowrl serve's default
    --host) refuses [::1]: when that refusal was gRPC's last error, `flowrl wait` and `flowrl control`
    against a TLS server without --tls-ca said nothing listens there, while it ran."""
    cert, key = pki["server"]
    config = ServeConfig(pki["policy"], host="127.0.0.1", port=0, tls_cert=cert, tls_key=key, grace_s=0)
    with PolicyServer(config).start() as server:
        hint = connection_hint(_ipv6_refused(server.port), f"localhost:{server.port}", "", "")
        assert "nothing listens" not in hint and "if the server uses TLS, pass --tls-ca" in hint, hint
        assert "--max-connections" in hint, hint  # 127.0.0.1's own error is unknown: it may be the cap
        assert "--client-ca" in connection_hint(_ipv6_refused(server.port), f"localhost:{server.port}", "ca.pem", "")
        for _ in range(2):  # whichever address gRPC tried last
            result = runner.invoke(app, ["wait", "--server", f"localhost:{server.port}", "--timeout", "1"])
            assert result.exit_code == 1 and "Traceback" not in result.output, result.output
            assert "nothing listens" not in result.output and "pass --tls-ca" in result.output, result.output
        port = server.port
    assert connection_hint(_ipv6_refused(port), f"localhost:{port}", "", "").startswith("nothing listens at that port")


def test_a_refused_ipv6_address_asked_for_by_name_is_still_no_server():
    """[::1] given as the address itself: its refusal is the answer, nothing else was tried."""
    from closed_port import closed_address

    port = int(closed_address().rpartition(":")[2])
    assert connection_hint(_ipv6_refused(port), f"[::1]:{port}", "", "").startswith("nothing listens at that port")


_LINUX_REFUSED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50051: Failed to connect to remote "
    "host: Connection refused"
)


def test_no_server_at_the_default_address_says_it_is_the_default_and_where_the_real_one_is_printed():
    """A user who started `flowrl serve --port 0` (or another --port) and left --server out."""
    hint = connection_hint(_LINUX_REFUSED, DEFAULT_SERVER, "", "")
    assert hint.startswith("nothing listens at that port on this machine: is `flowrl serve` running?"), hint
    assert hint.endswith(
        f"`flowrl serve` prints its address in its 'serving' line ({DEFAULT_SERVER} is --server's default)"
    )


def test_no_server_at_an_address_given_is_not_told_of_the_default():
    hint = connection_hint(_LINUX_REFUSED.replace("50051", "50052"), "localhost:50052", "", "")
    assert hint.startswith("nothing listens at that port on this machine") and "default" not in hint


def test_the_cli_defaults_to_the_default_server():
    result = CliRunner().invoke(app, ["query", "--help"], env={"COLUMNS": "200"})
    assert f"default: {DEFAULT_SERVER}" in result.output
