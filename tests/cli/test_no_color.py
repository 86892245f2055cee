"""NO_COLOR (no-color.org) and TERM=dumb turn the colour of error and warning lines off on a terminal too: CI
runners that allocate one (``docker run -t``, Jenkins) showed ``^[[31merror: …^[[0m`` in their logs."""

from __future__ import annotations

import io
import sys

import pytest

from flowrl_deploy.cli import app


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    "env, coloured", [({}, True), ({"NO_COLOR": ""}, True), ({"NO_COLOR": "1"}, False), ({"TERM": "dumb"}, False)]
)
def test_no_color_and_a_dumb_terminal_turn_the_colour_off(monkeypatch, env, coloured):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "stderr", _Terminal())
    with pytest.raises(SystemExit) as exited:
        app(["inspect", "/nonexistent.onnx"], prog_name="flowrl")
    written = sys.stderr.getvalue()
    assert exited.value.code == 1 and "error: ONNX model not found: /nonexistent.onnx" in written
    assert ("\033[" in written) == coloured
