"""`flowrl --help` and each command's `--help` on an 80-column terminal: whole flag names, lines that
fit, commands in the pipeline's order, no value shown for a flag, argument names as the text names
them, and `<path>` for every option that takes a file (newcomer review H1-H4)."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from flowrl_deploy.cli import app

runner = CliRunner()
PIPELINE = ["demo", "train", "eval", "export", "inspect", "serve", "query", "control", "stats", "reload", "wait"]
COMMANDS = typer.main.get_command(app).commands


def help_of(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "80", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    return result.output


def test_the_command_list_follows_the_pipeline_and_each_summary_is_whole():
    text = help_of()
    listed = re.findall(r"^  ([a-z]+)  +(.*)$", text.split("Commands:")[1], re.MULTILINE)
    assert [name for name, _ in listed] == PIPELINE
    for name, summary in listed:
        assert not summary.endswith("..."), f"{name}'s summary is cut: {summary!r}"


@pytest.mark.parametrize("command", PIPELINE)
def test_a_commands_help_fits_80_columns_with_whole_flag_names(command):
    text = help_of(command)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    for param in COMMANDS[command].params:
        for name in [*param.opts, *param.secondary_opts]:
            if name.startswith("-"):
                assert re.search(rf"(^|[ ,/]){re.escape(name)}([ ,]|$)", text, re.MULTILINE), f"{name} is cut:\n{text}"
    assert "<bool>" not in text  # a flag takes no value (`--json true` is an error)


@pytest.mark.parametrize(
    ("command", "usage", "argument"),
    [("eval", "{POLICY}", "POLICY"), ("export", "{CHECKPOINT}", "CHECKPOINT"), ("inspect", "[MODEL]", "MODEL"),
     ("serve", "{MODEL}", "MODEL"), ("reload", "[PATH]", "PATH")],
)  # fmt: skip
def test_arguments_are_named_as_the_text_names_them(command, usage, argument):
    text = help_of(command)
    assert f"Usage: flowrl {command} [OPTIONS] {usage}" in text
    assert re.search(rf"^  {argument} <", text, re.MULTILINE), text


@pytest.mark.parametrize(
    ("command", "flags"),
    [("serve", ["--token-file", "--tls-cert", "--tls-key", "--client-ca"]),
     ("query", ["--token-file", "--tls-ca", "--tls-cert", "--tls-key", "--obs-file"]),
     ("control", ["--local-model", "--json", "--tls-ca"]), ("train", ["--out", "--resume"]),
     ("export", ["--out", "--json"]), ("demo", ["--out"])],
)  # fmt: skip
def test_options_taking_a_file_show_path(command, flags):
    text = help_of(command)
    for flag in flags:
        assert re.search(rf"{flag} <path>", text), f"{flag}:\n{text}"


def test_eval_device_shows_its_choices_as_train_does():
    assert "--device <auto|cpu|cuda>" in help_of("eval")
    assert "--device <auto|cpu|cuda>" in help_of("train")


def _option_help(command: str, flag: str) -> str:
    (param,) = [p for p in COMMANDS[command].params if flag in p.opts]
    return param.help or ""


def _ranges():
    from flowrl_deploy.cli.export import MAX_BATCH as MAX_EXPORT_BATCH
    from flowrl_deploy.contract import MAX_HZ, MAX_TIMEOUT_S, MIN_HZ
    from flowrl_deploy.serve.config import MAX_BATCH
    from flowrl_deploy.spec import MAX_FLOW_STEPS

    steps = f"1-{MAX_FLOW_STEPS}"
    return [
        ("train", "--flow-steps", steps), ("eval", "--flow-steps", steps), ("export", "--steps", steps),
        ("serve", "--steps", steps), ("export", "--batch", f"1-{MAX_EXPORT_BATCH}"),
        ("serve", "--max-batch", f"1-{MAX_BATCH}"), ("serve", "--grace-s", f"at most {MAX_TIMEOUT_S:g}"),
        ("control", "--hz", f"{MIN_HZ:g}-{MAX_HZ:g} Hz"), ("query", "--seed", "0 to 2**64-1"),
    ]  # fmt: skip


def test_each_enforced_range_in_the_help_is_the_one_the_code_enforces():
    """A user picks a value from the help: out of date, it promises one the command then refuses."""
    for command, flag, stated in _ranges():
        assert stated in _option_help(command, flag), (command, flag, _option_help(command, flag))


def test_options_with_a_surprising_default_or_effect_say_so():
    assert "default: unseeded" in _option_help("query", "--seed")  # each call samples new noise
    assert "default: no metrics endpoint" in _option_help("serve", "--metrics-port")
    assert "CUDA graphs (--cuda-graphs) are then off" in _option_help("train", "--compile")
    assert "--fallback <hold|zeros|local>" in help_of("control")
