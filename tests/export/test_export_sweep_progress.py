"""A `--steps` sweep says each file as soon as it is written: it printed nothing until every N was done,
so a sweep that failed (a full disk) or was interrupted part-way left its earlier files unmentioned.
Now each file's "wrote …" lines come as it is written, and a failure names the files written before it."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.export import ExportConfig
from flowrl_deploy.export import sweep as sweep_module

runner = CliRunner()


def fail_at(monkeypatch, steps: int, error: BaseException) -> list[int]:
    """Make the sweep's export of ``steps`` flow steps raise ``error``; returns the N exported."""
    real = sweep_module.export_checkpoint
    done: list[int] = []

    def export(checkpoint, path, config):
        if config.steps == steps:
            raise error
        done.append(config.steps)
        return real(checkpoint, path, config)

    monkeypatch.setattr(sweep_module, "export_checkpoint", export)
    return done


def test_sweep_steps_reports_each_file_as_it_is_written(checkpoint, tmp_path, monkeypatch):
    fail_at(monkeypatch, 3, FlowRLError("cannot write p.n3.onnx: No space left on device"))
    seen = []
    with pytest.raises(FlowRLError, match="No space left"):
        sweep_module.sweep_steps(
            checkpoint, tmp_path / "p.onnx", ExportConfig(verify=False), [1, 2, 3], on_file=seen.append
        )
    assert [report.path.name for report in seen] == ["p.n1.onnx", "p.n2.onnx"]


@pytest.mark.parametrize(
    ("error", "code", "said"),
    [
        (FlowRLError("cannot write p.n3.onnx: No space left on device"), 1, "error: cannot write p.n3.onnx"),
        (KeyboardInterrupt(), 130, "interrupted (Ctrl-C)"),
    ],
)
def test_a_failed_sweep_names_the_files_it_wrote(checkpoint, tmp_path, monkeypatch, error, code, said):
    fail_at(monkeypatch, 3, error)
    out = tmp_path / "p.onnx"
    result = runner.invoke(app, ["export", str(checkpoint), "--steps", "1,2,3", "--no-verify", "--out", str(out)])
    assert result.exit_code == code, result.output
    assert f"wrote {tmp_path / 'p.n1.onnx'}" in result.stdout and f"wrote {tmp_path / 'p.n2.onnx'}" in result.stdout
    files = f"{tmp_path / 'p.n1.onnx'} and {tmp_path / 'p.n2.onnx'}"
    assert f"{files} were written before the sweep stopped (N=3 was not exported)" in result.stderr, result.stderr
    assert said in result.stderr


def test_a_sweep_that_fails_at_its_first_file_says_nothing_was_written(checkpoint, tmp_path, monkeypatch):
    fail_at(monkeypatch, 1, FlowRLError("cannot write p.n1.onnx: No space left on device"))
    result = runner.invoke(app, ["export", str(checkpoint), "--steps", "1,2", "--out", str(tmp_path / "p.onnx")])
    assert result.exit_code == 1 and "written before" not in result.output and "wrote" not in result.stdout


def test_the_note_names_one_file_or_several_and_the_n_left():
    from pathlib import Path

    from flowrl_deploy.cli.export import stopped_sweep_note

    assert stopped_sweep_note([Path("p.n1.onnx")], [2, 5]) == (
        "p.n1.onnx was written before the sweep stopped (N=2, 5 were not exported)"
    )
    assert stopped_sweep_note([Path("a"), Path("b"), Path("c")], []) == (
        "a, b and c were written before the sweep stopped"  # stopped while evaluating the last N
    )
