"""`flowrl serve --log-format text|json --log-level …`: what its stderr holds (the banner stays on stdout)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tiny_policy import write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.serve.process import ServerProcess

runner = CliRunner()
UTC_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_json_log_lines_are_one_object_each_and_the_banner_stays_on_stdout(tmp_path):
    log = tmp_path / "serve.log"
    with ServerProcess(write_policy(tmp_path / "policy.onnx"), "--log-format", "json", log=log) as process:
        assert process.banner.startswith("serving v1-")  # stdout, as before
        assert process.stop() == 0
        process._stderr_drain.join(10)  # the log is complete
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert all(UTC_TIME.fullmatch(entry["time"]) for entry in entries), entries
    messages = [(entry["level"], entry["logger"], entry["message"].split(" ")[0]) for entry in entries]
    assert messages[:2] == [("INFO", "flowrl.serve", "loading"), ("INFO", "flowrl.serve", "loaded")], messages
    assert ("INFO", "flowrl.serve", "stopping") in messages and messages[-1] == ("INFO", "flowrl.serve", "stopped")


def test_text_log_lines_begin_with_a_utc_timestamp_and_log_level_warning_drops_info(tmp_path):
    policy = write_policy(tmp_path / "policy.onnx")
    log = tmp_path / "serve.log"
    with ServerProcess(policy, log=log) as process:
        assert process.stop() == 0
        process._stderr_drain.join(10)
    first = log.read_text().splitlines()[0]
    assert UTC_TIME.fullmatch(first.split(" ")[0]) and " INFO flowrl.serve: loading " in first, first
    with ServerProcess(policy, "--log-level", "warning", log=log) as process:
        assert process.stop() == 0
        process._stderr_drain.join(10)
    assert log.read_text() == ""


def test_a_refusal_is_a_json_error_line_too(tmp_path):
    """A model refused as it loads was a bare ``error: …`` line among JSON ones, which `| json` drops."""
    command = [sys.executable, "-m", "flowrl_deploy.cli", "serve", str(tmp_path / "nothere.onnx"), "--port", "0"]
    result = subprocess.run(
        [*command, "--log-format", "json"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert result.returncode == 1 and result.stdout == ""
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert entries[-1]["level"] == "ERROR" and "nothere.onnx" in entries[-1]["message"], entries
    assert not entries[-1]["message"].startswith("error:")


def test_an_unknown_log_format_or_level_is_a_usage_error(tmp_path):
    policy = str(write_policy(tmp_path / "policy.onnx"))
    for option, value in (("--log-format", "yaml"), ("--log-level", "trace")):
        result = runner.invoke(app, ["serve", policy, option, value])
        assert result.exit_code == 2 and value in result.output, result.output


def test_log_level_debug_is_flowrls_own_debug_lines_and_json_takes_pythons_warnings():
    script = (
        "import logging, warnings; from flowrl_deploy.cli.serve import configure_logging; "
        "configure_logging('json', 'debug'); logging.getLogger('flowrl.serve').debug('mine'); "
        "logging.getLogger('grpc').debug('theirs'); logging.getLogger('grpc').info('theirs too'); "
        "warnings.warn('careful')"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(entry["level"], entry["logger"]) for entry in entries] == [
        ("DEBUG", "flowrl.serve"),
        ("INFO", "grpc"),
        ("WARNING", "py.warnings"),
    ], entries
    assert "UserWarning: careful" in entries[-1]["message"]
