"""--token-file: the token read from a file (systemd's LoadCredential= puts one in
$CREDENTIALS_DIRECTORY), for `flowrl serve` and every command that calls a server. A misspelled
FLOWRL_TOKEN in an EnvironmentFile served without authentication; a missing file is refused."""

from __future__ import annotations

import pytest
from tiny_policy import write_policy
from typer.testing import CliRunner

import flowrl_deploy.serve
from flowrl_deploy.cli import app
from flowrl_deploy.serve import PolicyServer, ServeConfig

runner = CliRunner()
TOKEN = "s3cr:et with/inner spaces~"


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return write_policy(tmp_path_factory.mktemp("token_file") / "policy.onnx")


@pytest.fixture
def serve_call(monkeypatch):
    called: dict = {}

    def serve_forever(config, on_ready=None, export_checkpoint=None):
        called.update(config=config)

    monkeypatch.setattr(flowrl_deploy.serve, "serve_forever", serve_forever)
    return called


def serve(policy, *args: str, env: dict | None = None):
    return runner.invoke(app, ["serve", str(policy), "--port", "0", *args], env={"FLOWRL_TOKEN": None, **(env or {})})


@pytest.mark.parametrize("ending", ["", "\n", "\r\n"])
def test_serve_reads_the_token_from_a_file_dropping_one_line_ending(policy, serve_call, tmp_path, ending):
    (tmp_path / "flowrl-token").write_bytes((TOKEN + ending).encode())
    result = serve(policy, "--token-file", str(tmp_path / "flowrl-token"))
    assert result.exit_code == 0, result.output
    assert serve_call["config"].token == TOKEN and TOKEN not in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"\n", "is empty"),
        (b"  \n", "is empty"),
        (TOKEN.encode() + b"\n\n", "holds more than one line"),
        (b"s3cr\net\n", "holds more than one line"),
        (b"s3cr\x01et\n", "holds a control character at position 5"),
        (b"s3cr\xc3\xa9t\n", "holds a non-ASCII character at position 5"),
    ],
)
def test_a_file_without_one_usable_token_is_refused_in_one_line_never_showing_it(
    policy, serve_call, tmp_path, content, message
):
    path = tmp_path / "flowrl-token"
    path.write_bytes(content)
    result = serve(policy, "--token-file", str(path))
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"error: --token-file {path} ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "s3cr" not in result.output
    assert not serve_call


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_an_unreadable_file_is_refused(policy, serve_call, tmp_path, kind):
    path = tmp_path / "flowrl-token"
    if kind == "directory":
        path.mkdir()
    result = serve(policy, "--token-file", str(path))
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"error: cannot read --token-file {path}: ") and "Traceback" not in result.output
    assert not serve_call


@pytest.mark.parametrize(
    ("args", "env", "source"),
    [(["--token", "0ther"], {}, "--token"), ([], {"FLOWRL_TOKEN": "0ther"}, "FLOWRL_TOKEN")],
)
def test_a_token_given_twice_is_refused(policy, serve_call, tmp_path, args, env, source):
    (tmp_path / "flowrl-token").write_text(TOKEN)
    result = serve(policy, "--token-file", str(tmp_path / "flowrl-token"), *args, env=env)
    assert result.exit_code == 1, result.output
    assert source in result.output and "--token-file" in result.output and "0ther" not in result.output
    assert not serve_call


@pytest.fixture(scope="module")
def served(policy):
    with PolicyServer(ServeConfig(str(policy), port=0, token=TOKEN, grace_s=0)).start() as server:
        yield server


@pytest.mark.parametrize(
    "command",
    [["stats"], ["query", "--obs", "[0.1, 0.2, 0.3]"], ["reload"], ["wait"]],
    ids=lambda command: command[0],
)
def test_client_commands_read_the_token_from_a_file(served, tmp_path, command):
    (tmp_path / "flowrl-token").write_text(TOKEN + "\n")
    given = ["--server", served.address, "--token-file", str(tmp_path / "flowrl-token")]
    result = runner.invoke(app, [*command, *given], env={"FLOWRL_TOKEN": None})
    assert result.exit_code == 0, result.output
    missing = runner.invoke(app, [*command, *given[:3], str(tmp_path / "nope")], env={"FLOWRL_TOKEN": None})
    assert missing.exit_code == 1 and "cannot read --token-file" in missing.output, missing.output


def test_control_passes_the_token_from_the_file(monkeypatch, tmp_path):
    import flowrl_deploy.train.control

    (tmp_path / "flowrl-token").write_text(TOKEN + "\n")
    called: dict = {}

    def run_control(*args, **kwargs):
        called.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(flowrl_deploy.train.control, "run_control", run_control)
    result = runner.invoke(app, ["control", "--token-file", str(tmp_path / "flowrl-token")], env={"FLOWRL_TOKEN": None})
    assert result.exit_code == 0, result.output
    assert called["token"] == TOKEN
