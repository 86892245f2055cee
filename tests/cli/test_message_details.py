"""Small message fixes from the fuzz review: each names the user's mistake in the user's terms.
`--server http://h:p` was 'more than one ':''; a unix socket was told about 'that port'; `--obs` of the
wrong size named a shape the user never gave, `0,0,0` got JSON's 'Extra data' and a 5000-digit number
Python's own advice; `flowrl inspect` of a checkpoint's weights said 'Wire format was corrupt'; a path
holding terminal escapes coloured the terminal; Ctrl-C just after `flowrl export` finished was a silent 130."""

from __future__ import annotations

import json
import re
import sys

import pytest
from tiny_policy import OBS_DIM, write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.cli.query import read_observation
from flowrl_deploy.connection import checked_target, connection_hint
from flowrl_deploy.errors import FlowRLError

runner = CliRunner()


@pytest.mark.parametrize("scheme", ["http", "https", "grpc"])
def test_a_url_scheme_is_named_with_the_address_to_give(scheme):
    with pytest.raises(
        FlowRLError, match=rf"--server '{scheme}://127.0.0.1:33059/': drop '{scheme}://': give 127\.0\.0\.1:33059"
    ):
        checked_target(f"{scheme}://127.0.0.1:33059/", "--server")


def test_a_refused_unix_socket_is_told_about_its_socket_path_not_a_port():
    hint = connection_hint("failed to connect to all addresses; last error: UNAVAILABLE: Connection refused",
                           "unix:/tmp/p.onnx", "", "")  # fmt: skip
    assert "port" not in hint and "nothing listens at that socket path" in hint


def test_obs_values_without_brackets_get_a_hint():
    with pytest.raises(FlowRLError, match=re.escape("--obs is not JSON: wrap the values in brackets: [0,0,0]")):
        read_observation("0,0,0", None)


def test_a_number_of_thousands_of_digits_is_our_message_not_pythons():
    with pytest.raises(FlowRLError) as caught:
        read_observation("[" + "1" * 5000 + "]", None)
    assert "set_int_max_str_digits" not in str(caught.value)
    assert f"--obs holds an integer of more than {sys.get_int_max_str_digits()} digits" in str(caught.value)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from flowrl_deploy.serve import PolicyServer, ServeConfig

    path = write_policy(tmp_path_factory.mktemp("served") / "policy.onnx")
    with PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as running:
        yield running.address


@pytest.mark.parametrize(
    ("obs", "given"),
    [("[0, 0]", "2 values"), ("[[0, 0, 0, 0], [1, 1, 1, 1]]", "rows of 4 values")],
)
def test_an_observation_of_the_wrong_size_counts_values(server, obs, given):
    result = runner.invoke(app, ["query", "--server", server, "--obs", obs])
    assert result.exit_code == 1, result.output
    assert f"error: --obs gives {given}, the served policy takes {OBS_DIM} (its obs_dim)" in result.output


def test_inspect_of_a_checkpoints_weights_says_how_to_export_it(tmp_path):
    weights = tmp_path / "step_1" / "model.safetensors"
    weights.parent.mkdir()
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    weights.write_bytes(len(header).to_bytes(8, "little") + header)
    result = runner.invoke(app, ["inspect", str(weights)])
    assert result.exit_code == 1
    assert (
        f"{weights} is a checkpoint's weights (safetensors), not an ONNX policy: "
        f"`flowrl export {weights.parent}` writes one" in result.output
    ), result.output


@pytest.mark.parametrize(
    "data",
    [b"\x08\x07", b"\x3a\x00"],
    ids=["ir-version-without-graph", "graph-without-ir-version"],  # a file cut short; a bare graph
)
def test_inspect_of_a_model_without_its_ir_version_or_graph_says_it_is_not_onnx(tmp_path, data):
    path = tmp_path / "p.onnx"
    path.write_bytes(data)
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 1
    assert "not an ONNX file (no IR version or graph)" in result.output, result.output


@pytest.mark.parametrize(
    "data",
    [b"\x10" + b"\0" * 7 + b"{" + b"x" * 7, b"\x01" + b"\0" * 7 + b"{}", b"\x04" + b"\0" * 7 + b"\x08\x07\x12\x00"],
    ids=["header-longer-than-the-file", "header-shorter-than-an-object", "no-json-object"],
)
def test_a_file_only_opening_as_safetensors_do_is_not_called_a_checkpoints_weights(tmp_path, data):
    from flowrl_deploy.onnxfile import is_safetensors

    assert not is_safetensors(data)
    assert is_safetensors(b"\x02" + b"\0" * 7 + b"{}")  # the least: an empty JSON object


def test_a_path_holding_terminal_escapes_is_printed_escaped(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path / "bad\x1b[31mname")])
    assert result.exit_code == 1
    assert "\x1b" not in result.output and "bad\\x1b[31mname" in result.output, repr(result.output)


def test_ctrl_c_after_a_command_finished_says_its_output_is_complete(tmp_path, monkeypatch, capsys):
    """The interrupt lands after the command returned (click's context is being closed): no command's
    own handler sees it, and click's exit 130 said nothing."""
    import typer

    def interrupted(self, code=0):
        raise KeyboardInterrupt

    # click's Context, vendored (typer._click) or not (typer 0.17, the lower bound): the class defining exit
    clicks = next(cls for cls in typer.Context.__mro__ if "exit" in vars(cls))
    monkeypatch.setattr(clicks, "exit", interrupted)
    with pytest.raises(SystemExit) as stopped:
        app(["inspect", str(write_policy(tmp_path / "p.onnx"))], prog_name="flowrl")
    assert stopped.value.code == 130
    err = capsys.readouterr().err
    assert err == "interrupted (Ctrl-C) after flowrl inspect finished: its output is complete\n"


def test_ctrl_c_before_any_command_began_says_nothing_was_done(monkeypatch, capsys):
    from flowrl_deploy.cli import _common

    monkeypatch.setattr(_common, "finished", [])
    _common.report_late_interrupt()
    assert capsys.readouterr().err == "interrupted (Ctrl-C) before the command began: nothing was done\n"
