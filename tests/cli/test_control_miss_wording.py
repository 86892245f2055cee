"""`flowrl control --max-misses` counts every tick without a fresh action (deadline, disconnected, a
server refusal), as the session's watchdog does: its help and docs/client.md said 'deadline misses'."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from flowrl_deploy.cli import app

CLIENT_MD = Path(__file__).parents[2] / "docs" / "client.md"


def test_max_misses_is_described_as_fallback_ticks_in_a_row():
    result = CliRunner().invoke(app, ["control", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())  # as wrapped to any width
    assert "this many ticks in a row without a fresh action" in text
    assert "deadline misses in a row" not in text


def test_client_md_says_what_max_misses_counts():
    text = " ".join(CLIENT_MD.read_text().split())
    assert "deadline misses in a row" not in text
    assert "`--max-misses N` stops the run (exit 1) after N ticks in a row without a fresh action" in text
