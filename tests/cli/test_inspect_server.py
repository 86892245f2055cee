"""`flowrl inspect --server HOST:PORT`: the served policy's contract, printed as `flowrl inspect FILE`
prints a file's, for a robot computer that has no copy of the file (GetSpec, with the connection
options of the other client commands)."""

from __future__ import annotations

import json

import pytest
from closed_port import closed_address
from tiny_policy import write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.serve import PolicyServer, ServeConfig

runner = CliRunner()
CONTRACT_LINES = ("contract", "env", "observation", "action", "bounds", "sampler", "noise")
"""What a served policy and its file share in `flowrl inspect`'s text (the rest describes the file)."""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = write_policy(tmp_path_factory.mktemp("inspect") / "policy.onnx", env_id="dmc:cartpole-balance")
    with PolicyServer(ServeConfig(str(path), port=0, grace_s=0, token="s3cret")).start() as server:
        yield path, server.address


def _lines(output: str) -> dict[str, str]:
    return {line[:13].strip(): line for line in output.splitlines() if line[:13].strip()}


def test_the_served_contract_is_printed_as_the_files(served):
    path, address = served
    result = runner.invoke(app, ["inspect", "--server", address, "--token", "s3cret"])
    assert result.exit_code == 0, result.output
    of_file = runner.invoke(app, ["inspect", str(path)])
    served_lines, file_lines = _lines(result.output), _lines(of_file.output)
    assert [served_lines[k] for k in CONTRACT_LINES] == [file_lines[k] for k in CONTRACT_LINES]
    assert served_lines["server"].startswith(f"server       {address}")
    assert served_lines["model"].startswith("model        v1-")


def test_the_served_contract_as_json(served):
    path, address = served
    result = runner.invoke(app, ["inspect", "--server", address, "--token", "s3cret", "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    of_file = json.loads(runner.invoke(app, ["inspect", str(path), "--json"]).output)
    assert (got["contract_hash"], got["contract"]) == (of_file["contract_hash"], of_file["contract"])
    assert got["server"] == address and got["model_version"].startswith("v1-") and got["max_batch"] >= 1


def test_the_token_goes_with_the_call(served):
    _, address = served
    result = runner.invoke(app, ["inspect", "--server", address])
    assert result.exit_code == 1
    assert "UNAUTHENTICATED" in result.output and "--token" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give MODEL (a policy .onnx file) or --server HOST:PORT (a running server)"),
        (["policy.onnx", "--server", "localhost:1"], "give MODEL or --server, not both"),
        (["policy.onnx", "--tls-ca", "ca.pem"], "--tls-ca is used only with --server"),
        (["policy.onnx", "--token", "s3cret"], "--token is used only with --server"),
    ],
)
def test_model_or_server_is_asked_for(args, message):
    result = runner.invoke(app, ["inspect", *args])
    assert result.exit_code == 1, result.output
    assert message in result.output


def test_a_server_that_is_not_there_is_one_line():
    result = runner.invoke(app, ["inspect", "--server", closed_address(), "--timeout", "1"])
    assert result.exit_code == 1
    assert "UNAVAILABLE" in result.output and "Traceback" not in result.output


def test_help_promises_no_default_server():
    """A bare `flowrl inspect` asks for MODEL or --server, so its help must not show the other client
    commands' default server (it read '[default: localhost:50051]')."""
    result = runner.invoke(app, ["inspect", "--help"], terminal_width=200)
    server_line = next(line for line in result.output.splitlines() if line.strip().startswith("--server"))
    assert "localhost:50051" not in server_line and "instead of MODEL" in server_line


def test_a_connections_repr_leaves_out_its_token():
    from flowrl_deploy.cli._common import Connection

    connection = Connection("localhost:1", "s3cret", "", "", "", "")
    assert "s3cret" not in repr(connection) and "localhost:1" in repr(connection)


def test_an_exported_token_does_not_stop_inspecting_a_file(served, monkeypatch):
    """--token on the command line with MODEL is refused (it is for --server); FLOWRL_TOKEN in the
    environment, as a robot's shell exports it for every client command, is not a mistake."""
    monkeypatch.setenv("FLOWRL_TOKEN", "s3cret")
    result = runner.invoke(app, ["inspect", str(served[0])])
    assert result.exit_code == 0, result.output
    assert "contract" in result.output
