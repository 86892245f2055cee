"""`flowrl query --obs-file -` reads the observation from standard input, where Windows has no
/dev/stdin: JSON or an .npy array, bounded like a pipe, and empty input is one line naming it."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from closed_port import closed_address
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.cli.query import read_observation
from flowrl_deploy.errors import FlowRLError

runner = CliRunner()


def _query(stdin: str | bytes):
    args = ["query", "--server", closed_address(), "--obs-file", "-", "--timeout", "1"]
    return runner.invoke(app, args, input=stdin)


def test_json_piped_in_is_read_and_sent():
    result = _query("[0.1, 0.2, 0.3]\n")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "UNAVAILABLE" in result.output and "--obs-file" not in result.output  # read; then no server answered


@pytest.mark.parametrize("stdin", ["", "\r\n"])  # nothing, or `echo.` on Windows
def test_empty_standard_input_is_one_line_naming_it(stdin):
    result = _query(stdin)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("error: --obs-file -: standard input is empty"), result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_mistake_in_piped_json_names_standard_input():
    result = _query("[1, true, 3]")
    assert "--obs-file - (standard input) holds true, not a number" in result.output


def _stdin(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_an_npy_array_piped_in_is_read(monkeypatch):
    buffer = io.BytesIO()
    np.save(buffer, np.array([[1, 2], [3, 4]], dtype=np.int16))
    _stdin(monkeypatch, buffer.getvalue())
    np.testing.assert_array_equal(read_observation("", Path("-")), np.array([[1, 2], [3, 4]], np.float32))


def test_endless_standard_input_is_cut_off(monkeypatch):
    _stdin(monkeypatch, b"1" * (17 << 20))
    with pytest.raises(FlowRLError, match=r"^--obs-file - \(standard input\) holds more than 16 MiB"):
        read_observation("", Path("-"))


def test_no_standard_input_at_all_is_named(monkeypatch):
    """pythonw.exe, or a service, runs with sys.stdin None."""
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(FlowRLError, match=r"^--obs-file -: this process has no standard input"):
        read_observation("", Path("-"))


class _Terminal(io.TextIOWrapper):
    def isatty(self) -> bool:
        return True


def test_a_terminal_on_standard_input_is_told_how_to_end_the_observation(monkeypatch, capsys):
    """`--obs-file -` typed without a pipe waited for end-of-file without a word."""
    monkeypatch.setattr(sys, "stdin", _Terminal(io.BytesIO(b"[0.5, 1]\n")))
    np.testing.assert_array_equal(read_observation("", Path("-")), np.array([0.5, 1], np.float32))
    prompt = capsys.readouterr()
    assert prompt.out == ""
    assert prompt.err.startswith("reading the observation from standard input") and "Ctrl-" in prompt.err
    assert len(prompt.err.splitlines()) == 1


def test_a_pipe_on_standard_input_is_read_without_a_prompt(monkeypatch, capsys):
    _stdin(monkeypatch, b"[0.5, 1]\n")
    read_observation("", Path("-"))
    assert capsys.readouterr().err == ""
