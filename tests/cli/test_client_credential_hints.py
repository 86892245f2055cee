"""A command that calls a server says which of its own options fixes a refused credential: an
UNAUTHENTICATED reply (the server's words name the gRPC header, 'send authorization: Bearer <token>',
written for raw gRPC clients) names --token, --token-file and FLOWRL_TOKEN, and a server's certificate
given as --tls-cert alone is pointed at --tls-ca."""

from __future__ import annotations

import pytest
from tiny_policy import write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.serve import PolicyServer, ServeConfig

runner = CliRunner()
TOKEN = "s3cret"
NO_TOKEN_GIVEN = (
    "(the server asks for a token: pass its shared secret with --token or --token-file, or set FLOWRL_TOKEN)"
)
COMMANDS = {
    "query": ["query", "--obs", "[0.1, 0.2, 0.3]"],
    "stats": ["stats"],
    "reload": ["reload"],
    "wait": ["wait", "--timeout", "5"],
    "control": ["control", "--max-steps", "3"],
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    policy = write_policy(tmp_path_factory.mktemp("auth") / "policy.onnx")
    with PolicyServer(ServeConfig(str(policy), port=0, token=TOKEN, grace_s=0)).start() as server:
        yield server


def _refused(served, command: list[str], *given: str, env: dict | None = None) -> str:
    result = runner.invoke(
        app, [*command, "--server", served.address, *given], env={"FLOWRL_TOKEN": None, **(env or {})}
    )
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    (error,) = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert "UNAUTHENTICATED" in error, error
    return error


@pytest.mark.parametrize("name", COMMANDS)
def test_a_missing_token_names_the_options_that_give_one(served, name):
    if name == "control":
        pytest.importorskip("dm_control")
    wait = ["--connect-timeout", "5"] if name == "control" else []  # wait takes no token: it asks for the model
    error = _refused(served, COMMANDS[name], *(wait if name != "wait" else ["--token", "wrong"]))
    if name == "wait":
        assert error.endswith("(the server refused the token given with --token: give the server's shared secret)")
    else:
        assert error.endswith(NO_TOKEN_GIVEN), error


@pytest.mark.parametrize(
    ("given", "env", "source"),
    [
        (["--token", "wrong"], None, "--token"),
        ([], {"FLOWRL_TOKEN": "wrong"}, "FLOWRL_TOKEN"),
        (["--token-file", "{file}"], None, "--token-file {file}"),
    ],
    ids=["flag", "environment", "file"],
)
def test_a_wrong_token_names_where_it_came_from(served, tmp_path, given, env, source):
    file = tmp_path / "flowrl-token"
    file.write_text("wrong\n")
    given = [part.replace("{file}", str(file)) for part in given]
    error = _refused(served, COMMANDS["stats"], *given, env=env)
    expected = f"(the server refused the token given with {source.replace('{file}', str(file))}: give the server's"
    assert expected in error, error


@pytest.mark.parametrize("name", COMMANDS)
def test_a_client_certificate_without_its_key_points_at_tls_ca(name, tmp_path):
    """`flowrl query --tls-cert server.pem`: the server's certificate, meant to be trusted."""
    result = runner.invoke(app, [*COMMANDS[name], "--server", "localhost:1", "--tls-cert", str(tmp_path / "srv.pem")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "--tls-cert and --tls-key go together: --tls-cert was given without --tls-key" in result.output
    assert (
        "to trust the server's certificate, pass its CA, or a self-signed server's own certificate, with --tls-ca"
        in (result.output)
    ), result.output
