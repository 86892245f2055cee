"""`flowrl serve` mistakes: one clear line and exit status 1, never a traceback or a server on the wrong port."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys

import pytest
import typer
from tiny_policy import write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.serve import ServeConfig
from flowrl_deploy.serve.config import CODE_ONLY

runner = CliRunner()


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return write_policy(tmp_path_factory.mktemp("serve-errors") / "policy.onnx")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "99999"], "--port must lie in [0, 65535]"),
        (["--port", "-5"], "--port must lie in [0, 65535]"),
        (["--port", "0", "--metrics-port", "70000"], "--metrics-port must lie in [0, 65535]"),
        (["--port", "0", "--providers", "foo"], "unknown onnxruntime provider 'foo'"),
        (["--port", "0", "--max-message-bytes", "0"], "--max-message-bytes must lie in [1, 2147483647]"),
        (["--port", "0", "--max-sessions", "0"], "--max-sessions must be >= 1"),
        (["--port", "0", "--session-idle-s", "0"], "--session-idle-s must be > 0"),
        (["--port", "0", "--workers", "0"], "--workers must be >= 1, got 0"),
        (["--port", "0", "--batch-window-us", "-1"], "--batch-window-us must lie in [0, 1000000] µs"),
        (["--port", "0", "--max-batch", "100000000"], "--max-batch must be at most 4096"),
        (["--port", "0", "--token", ""], "--token is empty (an unset variable?)"),
        (["--port", "0", "--token", "   "], "--token is empty (an unset variable?)"),
        (["--port", "0", "--steps", "3"], "--steps applies to a checkpoint"),
        (["--port", "0", "--steps", "0"], "--steps must lie in [1, 1000]"),
        (["--port", "0", "--cpus", "x"], "--cpus 'x': use core ids"),
        (["--port", "0", "--cpus", "0-999999999"], "--cpus '0-999999999': no core"),
        (["--port", "0", "--tls-cert", "{policy}", "--tls-key", "{policy}"], "is not a PEM file"),
    ],
)
def test_serve_option_mistakes_are_one_line_errors(policy, args, message):
    result = runner.invoke(app, ["serve", str(policy), *(a.format(policy=policy) for a in args)])
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


@pytest.fixture
def taken_port():
    """A port another server listens on (127.0.0.1)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_serve_with_its_metrics_port_in_use_is_one_line_error(policy, taken_port):
    result = runner.invoke(app, ["serve", str(policy), "--port", "0", "--metrics-port", str(taken_port)])
    assert result.exit_code == 1, result.output
    assert f"cannot serve metrics on 127.0.0.1:{taken_port}" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "address already in use (another server? give another --port, or --port 0 for a free one)"),
        ("192.0.2.1", "no interface of this machine has that address (give one of its addresses, or 0.0.0.0)"),
        ("not_a_host", "cannot resolve host 'not_a_host' ("),
        ("x..y", "'x..y' is not a valid host name"),  # the IDNA codec's UnicodeError was a traceback
    ],
)
def test_serve_where_it_cannot_listen_says_why_in_one_line(policy, taken_port, host, reason):
    """gRPC logged its C-core line ("E1126 ... add_port.cc:83] Failed to add port to server ...") and
    then "Failed to bind to address ...; set GRPC_VERBOSITY=debug ..." instead of the reason. A child
    process: gRPC's log goes to the process's stderr, and a server that did start is stopped by the timeout."""
    args = [sys.executable, "-m", "flowrl_deploy.cli", "serve", str(policy), "--host", host, "--port", str(taken_port)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot listen on {host}:{taken_port}: {reason}"), lines


def test_query_with_a_ca_that_is_not_pem_is_one_line_error(policy):
    result = runner.invoke(app, ["query", "--server", "127.0.0.1:1", "--obs", "[0, 0, 0]", "--tls-ca", str(policy)])
    assert result.exit_code == 1, result.output
    assert "is not a PEM file" in result.output and "Traceback" not in result.output


@pytest.fixture
def serve_call(monkeypatch):
    """Patch the server out of `flowrl serve`: the dict gets the ServeConfig it would have served
    and the exporter it would have been given for a checkpoint."""
    import flowrl_deploy.serve

    called: dict = {}

    def serve_forever(config, on_ready=None, export_checkpoint=None):
        called.update(config=config, export_checkpoint=export_checkpoint)

    monkeypatch.setattr(flowrl_deploy.serve, "serve_forever", serve_forever)
    return called


def test_flowrl_serve_with_no_options_serves_the_serve_config_defaults(policy, serve_call):
    """The CLI's defaults are literal copies of ServeConfig's (so --help shows them): they must agree."""
    result = runner.invoke(app, ["serve", str(policy)], env={"FLOWRL_TOKEN": None})
    assert result.exit_code == 0, result.output
    assert serve_call["config"] == ServeConfig(str(policy))


def test_no_reload_reaches_the_server(policy, serve_call):
    result = runner.invoke(app, ["serve", str(policy), "--no-reload"], env={"FLOWRL_TOKEN": None})
    assert result.exit_code == 0, result.output
    assert serve_call["config"].reload is False


CLI_ONLY = {"model", "token_file", "log_format", "log_level"}
"""Options that are no field of their own: MODEL is ``model``, --token-file gives ``token``, and the log's
format and level are the process's (a library's caller configures logging itself)."""
PARSED = {"providers": "", "cpus": "", "token": None}
"""Options whose text becomes the field's value (--providers 'cuda,cpu', --cpus '2,3'; no --token: "")."""


def test_every_flowrl_serve_option_is_a_serve_config_field_with_its_default():
    command = typer.main.get_command(app).commands["serve"]
    defaults = {field.name: field.default for field in dataclasses.fields(ServeConfig)}
    options = {param.name: param.default for param in command.params if param.name not in CLI_ONLY}
    assert set(options) == set(defaults) - CODE_ONLY - {"model"}
    for name, default in options.items():
        assert default == PARSED.get(name, defaults[name]), name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-window-us", "1000000000000000000000"], "--batch-window-us must lie in [0, 1000000] µs"),
        (["--batch-window-us", "100000000000"], "--batch-window-us must lie in [0, 1000000] µs"),
        (["--max-message-bytes", "4294967296"], "--max-message-bytes must lie in [1, 2147483647] (gRPC's limit)"),
    ],
)
def test_serve_settings_that_would_break_the_server_are_refused_before_it_starts(serve_call, policy, args, message):
    """A window of 1e21 µs killed the batcher's workers (OverflowError) and 1e11 µs timed out every
    Act, both while health said SERVING; 2**32 message bytes was an OverflowError from gRPC."""
    result = runner.invoke(app, ["serve", str(policy), "--port", "0", "--max-batch", "4", *args])
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not serve_call


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_flowrl_token_variable_is_refused(policy, serve_call, value):
    """click ignores an empty environment variable, so FLOWRL_TOKEN= arrived as no token: no authentication."""
    result = runner.invoke(app, ["serve", str(policy), "--port", "0"], env={"FLOWRL_TOKEN": value})
    assert result.exit_code == 1, result.output
    assert "FLOWRL_TOKEN is set but empty" in result.output and "Traceback" not in result.output
    assert not serve_call
    served = runner.invoke(app, ["serve", str(policy), "--port", "0"], env={"FLOWRL_TOKEN": "s3cret"})
    assert served.exit_code == 0, served.output
    assert serve_call["config"].token == "s3cret"
    serve_call.clear()
    given = runner.invoke(app, ["serve", str(policy), "--port", "0", "--token", "0ther"], env={"FLOWRL_TOKEN": value})
    assert given.exit_code == 0, given.output  # an explicit --token overrides the empty variable
    assert serve_call["config"].token == "0ther"


def test_steps_reaches_the_server_for_a_checkpoint(tmp_path, serve_call):
    result = runner.invoke(app, ["serve", str(tmp_path), "--port", "0", "--steps", "1"])
    assert result.exit_code == 0, result.output
    assert serve_call["config"].steps == 1
    assert callable(serve_call["export_checkpoint"])  # a checkpoint is served by exporting it
    runner.invoke(app, ["serve", str(tmp_path), "--port", "0"])
    assert serve_call["config"].steps is None  # the checkpoint's training steps
