"""`flowrl export --steps N` with an N other than the checkpoint's training N says so in one note line
on stderr: such an N samples a different policy, whose return may be far lower (docs/export.md,
"Choosing N")."""

from __future__ import annotations

from export_fixtures import SPEC
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.export.config import steps_note

runner = CliRunner()


def test_another_n_than_the_training_n_prints_one_note_on_stderr(checkpoint, tmp_path):
    assert SPEC.flow_steps == 1
    result = runner.invoke(app, ["export", str(checkpoint), "--steps", "4", "--out", str(tmp_path / "p.onnx")])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1, result.stderr
    assert "trained with N=1" in notes[0] and "--steps 4" in notes[0] and "--report" in notes[0]
    assert "note:" not in result.stdout  # the summary on stdout stays as it was, for scripts


def test_the_training_n_or_no_steps_prints_no_note(checkpoint, tmp_path):
    for extra in ([], ["--steps", "1"]):
        result = runner.invoke(app, ["export", str(checkpoint), "--out", str(tmp_path / "p.onnx"), *extra])
        assert result.exit_code == 0, result.output
        assert "note:" not in result.output
        assert "midpoint × 1 step," in result.stdout  # not "1 steps"


def test_a_sweep_prints_no_note(checkpoint, tmp_path):
    """A sweep's table compares the N itself."""
    result = runner.invoke(app, ["export", str(checkpoint), "--steps", "1,2", "--out", str(tmp_path / "p.onnx")])
    assert result.exit_code == 0, result.output
    assert "note:" not in result.output


def test_inspect_counts_one_value_and_one_step():
    from flowrl_deploy.errors import counted

    assert (counted(1, "value"), counted(17, "value"), counted(1, "step")) == ("1 value", "17 values", "1 step")


def test_steps_note_names_both_n_and_the_sweep():
    assert steps_note(trained=3, steps=3) is None
    note = steps_note(trained=1, steps=10)
    assert note is not None and "\n" not in note
    assert "N=1" in note and "--steps 10" in note and "--steps 1,10 --report --episodes 5" in note
    assert "--steps 2,5 --report" in (steps_note(trained=5, steps=2) or "")  # the sweep lists N in order


def notes_of(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("note:")]


def test_a_sweep_that_leaves_out_the_training_n_prints_one_note(checkpoint, tmp_path):
    """Its table has no row of the policy trained: each row samples another one."""
    for steps in ("2,5", "4"):  # a one-N --report table too
        out = str(tmp_path / "p.onnx")
        result = runner.invoke(app, ["export", str(checkpoint), "--steps", steps, "--report", "--out", out])
        assert result.exit_code == 0, result.output
        notes = notes_of(result)
        assert len(notes) == 1 and "trained with N=1" in notes[0], result.stderr
        assert "add 1 to the list" in notes[0] or "--steps 1,4 --report" in notes[0]


def test_another_solver_than_the_checkpoints_prints_one_note(checkpoint, tmp_path):
    assert SPEC.solver == "midpoint"
    out = str(tmp_path / "p.onnx")
    result = runner.invoke(app, ["export", str(checkpoint), "--solver", "euler", "--out", out])
    assert result.exit_code == 0, result.output
    notes = notes_of(result)
    assert len(notes) == 1, result.stderr
    assert "trained with the midpoint solver" in notes[0] and "--solver euler samples a different policy" in notes[0]
    same = runner.invoke(app, ["export", str(checkpoint), "--solver", "midpoint", "--out", out])
    assert same.exit_code == 0 and notes_of(same) == []
    both = runner.invoke(app, ["export", str(checkpoint), "--solver", "euler", "--steps", "2", "--out", out])
    assert both.exit_code == 0 and len(notes_of(both)) == 2, both.stderr


def test_sampler_notes_name_what_differs():
    from flowrl_deploy.export.config import sampler_notes

    assert sampler_notes(SPEC, [1, 2], "midpoint") == []
    assert sampler_notes(SPEC, [1], None) == []
    (note,) = sampler_notes(SPEC, [2, 5], None)
    assert "N=1" in note and "--steps 2,5 leaves out" in note and "add 1 to the list" in note
    (note,) = sampler_notes(SPEC, [1], "euler")
    assert "--solver euler" in note and "\n" not in note
