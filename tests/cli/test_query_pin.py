"""`--contract-hash` of `flowrl query` and `flowrl control`: a malformed hash is refused before
connecting, naming the flag; a wrong one says what the command line can do about it (the server's own
hint, to pin the contract itself, is something no command can)."""

from __future__ import annotations

import pytest
from closed_port import closed_address
from tiny_policy import write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.serve import PolicyServer, ServeConfig

runner = CliRunner()
OBS = ["--obs", "[0.1, 0.2, 0.3]"]


@pytest.fixture(scope="module")
def address(tmp_path_factory):
    path = write_policy(tmp_path_factory.mktemp("pin") / "policy.onnx")
    with PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as server:
        yield server.address


@pytest.mark.parametrize("command", [["query", *OBS], ["control", "--max-steps", "1"]])
@pytest.mark.parametrize("pin", ["not-a-hash", "deadbeef"])
def test_a_malformed_pin_is_refused_before_connecting(command, pin):
    result = runner.invoke(app, [*command, "--server", closed_address(), "--contract-hash", pin])
    assert result.exit_code == 1
    assert f"--contract-hash must be 16 hex digits (the contract hash `flowrl inspect` prints), got '{pin}'" in (
        result.output
    )
    assert "not SERVING" not in result.output and "UNAVAILABLE" not in result.output


def test_query_with_a_wrong_pin_says_to_compare_with_the_served_contract(address):
    result = runner.invoke(app, ["query", *OBS, "--server", address, "--contract-hash", "DEADBEEFDEADBEEF"])
    assert result.exit_code == 1
    assert "FAILED_PRECONDITION: pinned policy contract deadbeefdeadbeef, the server serves" in result.output
    assert f"`flowrl inspect --server {address}`" in result.output
    assert "pin the contract itself" not in result.output  # the commands take a hash only
