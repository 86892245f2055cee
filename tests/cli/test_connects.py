"""`@connects` declares the connection options once for every command that calls a running server:
each gets --server first and --token .. --tls-key together, with the same defaults, and one Connection."""

from __future__ import annotations

import pytest
import typer.main
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.cli._common import Connection, connects

CLIENT_COMMANDS = ["query", "reload", "stats", "wait", "control"]
CREDENTIALS = ["token", "token_file", "tls_ca", "tls_cert", "tls_key"]


@pytest.mark.parametrize("name", CLIENT_COMMANDS)
def test_each_client_command_has_the_connection_options(name):
    params = typer.main.get_command(app).commands[name].params
    options = [p for p in params if p.param_type_name == "option"]
    assert options[0].name == "server" and options[0].default == "localhost:50051"
    names = [p.name for p in options]
    first = names.index("token")
    assert names[first : first + len(CREDENTIALS)] == CREDENTIALS
    by_name = {p.name: p for p in options}
    assert [by_name[n].default for n in CREDENTIALS] == [""] * len(CREDENTIALS)
    assert by_name["token"].envvar == "FLOWRL_TOKEN"


def test_the_command_gets_one_connection_built_from_the_options(tmp_path):
    got = []
    demo = typer.Typer()

    @demo.command()
    @connects
    def probe(*, connection: Connection, verbose: bool = False) -> None:
        got.append((connection, verbose))

    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    args = ["--server", "host:1", "--token-file", str(token_file), "--tls-ca", "ca.pem", "--verbose"]
    result = CliRunner().invoke(demo, args, env={"FLOWRL_TOKEN": None})
    assert result.exit_code == 0, result.output
    assert got == [(Connection("host:1", "", str(token_file), "ca.pem", "", ""), True)]
    assert got[0][0].token_to_send() == "s3cret"


def test_a_command_without_a_keyword_only_connection_is_refused():
    def positional(connection: Connection) -> None: ...

    with pytest.raises(TypeError, match="keyword-only `connection: Connection`"):
        connects(positional)
