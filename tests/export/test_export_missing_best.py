"""`flowrl export RUN/checkpoints/best` before the run's first evaluation: no `best` exists yet, and the
refusal says why and what to give instead, as `flowrl eval`'s does (newcomer review D2)."""

from __future__ import annotations

from typer.testing import CliRunner

from flowrl_deploy.cli import app

runner = CliRunner()


def test_a_missing_best_beside_last_says_no_evaluation_has_made_it(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    (checkpoints / "step_000001000").mkdir(parents=True)
    (checkpoints / "last").symlink_to("step_000001000")
    result = runner.invoke(app, ["export", str(checkpoints / "best"), "--out", str(tmp_path / "p.onnx")])
    assert result.exit_code == 1
    line = result.output.strip()
    assert line.startswith(f"error: checkpoint not found: {checkpoints / 'best'} (give a checkpoint or run directory")
    assert "--eval-every" in line and "last" in line and len(line.splitlines()) == 1


def test_another_missing_path_names_what_to_give(tmp_path):
    result = runner.invoke(app, ["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "p.onnx")])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"error: checkpoint not found: {tmp_path / 'nothing'} (give a checkpoint or run directory)"
    )
