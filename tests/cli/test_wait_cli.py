"""`flowrl wait`: exit 0 once a server's health is SERVING, else 1 after --timeout with one line naming
what it last saw, for a service's start (systemd ExecStartPost=/ExecStartPre=, an init container)."""

from __future__ import annotations

import threading

import pytest
from closed_port import closed_address
from loading_server import loading_server
from tiny_policy import write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.serve import PolicyServer, ServeConfig

runner = CliRunner()
TOKEN = "s3cret"


def wait(server: str, *args: str):
    return runner.invoke(app, ["wait", "--server", server, *args])


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    return result.output


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return str(write_policy(tmp_path_factory.mktemp("wait") / "policy.onnx"))


def test_a_serving_server_is_waited_for_and_named(policy):
    with PolicyServer(ServeConfig(policy, port=0, grace_s=0)).start() as server:
        result = wait(server.address, "--timeout", "5")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{server.address} is SERVING")


def test_nothing_listening_fails_in_one_line_saying_so():
    output = one_line_error(wait(closed_address(), "--timeout", "0.5"))
    assert output.startswith("error: ") and "not SERVING after 0.5 s" in output
    assert "Connection refused" in output and "nothing listens at that port" in output
    assert output.count("is `flowrl serve` running") == 1  # the hint replaces wait_ready's own question


def test_a_server_still_loading_is_named_not_serving_and_then_waited_for(policy, monkeypatch):
    """The server listens (health NOT_SERVING) while it loads and warms up its model."""
    with loading_server(policy, monkeypatch) as (server, release):
        output = one_line_error(wait(server.address, "--timeout", "3"))  # a loaded machine may answer late
        assert "NOT_SERVING" in output and "pass --tls-ca" not in output
        threading.Timer(0.3, release.set).start()
        result = wait(server.address, "--timeout", "30")
        assert result.exit_code == 0, result.output


def test_a_token_is_checked_once_serving(policy, tmp_path):
    """Health needs no token: with one given, the wait also asks for the spec, so that a wrong token is
    found before the controller starts, and says the model version on success."""
    (tmp_path / "token").write_text(TOKEN + "\n")
    with PolicyServer(ServeConfig(policy, port=0, token=TOKEN, grace_s=0)).start() as server:
        right = wait(server.address, "--token", TOKEN)
        from_file = wait(server.address, "--token-file", str(tmp_path / "token"))
        without = wait(server.address)
        wrong = wait(server.address, "--token", "0ther", "--timeout", "2")
    for result in right, from_file:
        assert result.exit_code == 0, result.output
        assert "model v1-" in result.output and TOKEN not in result.output
    assert without.exit_code == 0, without.output  # as an ExecStartPost= of the server's own unit
    assert "UNAUTHENTICATED" in one_line_error(wrong) and "0ther" not in wrong.output


def test_tls_against_a_plaintext_server_names_the_cause(policy, tmp_path):
    pytest.importorskip("cryptography.x509")
    from pki import issue, write_pem

    ca = write_pem(tmp_path, "ca", *issue("flowrl test CA", ca=True))[0]
    with PolicyServer(ServeConfig(policy, port=0, grace_s=0)).start() as server:
        output = one_line_error(wait(server.address, "--tls-ca", ca, "--timeout", "1"))
    assert "the server does not use TLS: drop --tls-ca" in output


@pytest.mark.parametrize(("value", "message"), [("0", "--timeout must"), ("nan", "must be a finite number")])
def test_a_bad_timeout_is_refused(value, message):
    result = wait(closed_address(), "--timeout", value)
    assert result.exit_code in (1, 2) and message in result.output and "Traceback" not in result.output
