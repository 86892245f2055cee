"""What a run's checkpoints folder holds besides its saves: a user's copy (`step_000000200.bak`), a folder named
like a step but not one (`step_²`), or a link another user planted there. Only the folders a save names are
checkpoints; the others are left alone (a save crashed on them with a traceback); a link leading to another
run's checkpoint is refused (`--resume A` trained on in run B)."""

import os
import shutil
from pathlib import Path

import pytest
from intact_checkpoint import intact_checkpoint
from tiny_training import TINY
from typer.testing import CliRunner

from flowrl_deploy.checkpoint import BEST, CHECKPOINTS_DIR, DOCUMENT_FILE, LAST, METRICS_JSONL
from flowrl_deploy.cli import app
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.train.config import TrainConfig
from flowrl_deploy.train.loop import train
from flowrl_deploy.train.resume import holds_checkpoints, run_to_resume
from flowrl_deploy.train.retention import RunCheckpoints

runner = CliRunner()
FOREIGN = ["step_²", "step_000000200.bak", "step_0000000300", "step_x"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    train(TrainConfig(steps=200, out=str(out), **TINY), progress=False)
    return out


def _write(path):
    intact_checkpoint(path)


def test_a_save_leaves_folders_not_named_as_saves_alone(tmp_path):
    checkpoints = RunCheckpoints(tmp_path, save_every=200)
    for name in FOREIGN:
        _write(checkpoints.dir / name)
    for step in (200, 300, 400):
        checkpoints.save(step, _write)
    kept = sorted(p.name for p in checkpoints.dir.iterdir())
    assert kept == sorted([*FOREIGN, "last", "step_000000200", "step_000000400"])


def test_a_save_survives_a_best_link_leading_out_of_the_run(tmp_path):
    checkpoints = RunCheckpoints(tmp_path / "run", save_every=0)
    (tmp_path / "elsewhere").mkdir()
    (checkpoints.dir / BEST).symlink_to(tmp_path / "elsewhere")
    checkpoints.save(100, _write)
    assert sorted(p.name for p in checkpoints.dir.iterdir()) == ["best", "last", "step_000000100"]


def test_a_save_survives_symbolic_link_loops_in_the_folder(tmp_path):
    """Path.resolve raised RuntimeError ('Symlink loop') in pruning: a running job died at its next save."""
    checkpoints = RunCheckpoints(tmp_path / "run", save_every=0)
    (checkpoints.dir / "step_000000050").symlink_to("step_000000050")
    (checkpoints.dir / BEST).symlink_to(BEST)
    checkpoints.save(100, _write)
    assert sorted(p.name for p in checkpoints.dir.iterdir()) == ["best", "last", "step_000000050", "step_000000100"]


def test_only_saves_make_a_folder_a_runs(tmp_path):
    for name in FOREIGN:
        (tmp_path / CHECKPOINTS_DIR / name).mkdir(parents=True)
    assert not holds_checkpoints(tmp_path)
    (tmp_path / CHECKPOINTS_DIR / "step_000000100").mkdir()
    assert holds_checkpoints(tmp_path)


def test_a_resume_ignores_folders_not_named_as_saves_and_orders_steps_by_number(finished_run, tmp_path):
    run = shutil.copytree(finished_run, tmp_path / "run", symlinks=True)
    checkpoints = run / CHECKPOINTS_DIR
    for name in FOREIGN:
        shutil.copytree(checkpoints / "step_000000200", checkpoints / name)
    assert run_to_resume(checkpoints / "step_000000200") == run  # '…200.bak' > '…200': taken for a later one
    shutil.copytree(checkpoints / "step_000000200", checkpoints / "step_1000000000")
    with pytest.raises(FlowRLError, match=r"holds checkpoints after step_000000200 \(step_1000000000\)"):
        run_to_resume(checkpoints / "step_000000200")


def test_a_copy_not_named_as_a_save_is_behind_every_save(tmp_path):
    """A user's copy (`step_000000200.bak`) has no step: resuming it with a later save beside it would
    train on and prune or overwrite that save, so every save counts as later."""
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / CHECKPOINTS_DIR).mkdir()
    for name in ("step_000000200.bak", "step_000000400"):
        _write(tmp_path / CHECKPOINTS_DIR / name)
    with pytest.raises(FlowRLError, match=r"holds checkpoints after step_000000200\.bak \(step_000000400\)"):
        run_to_resume(tmp_path / CHECKPOINTS_DIR / "step_000000200.bak")
    shutil.rmtree(tmp_path / CHECKPOINTS_DIR / "step_000000400")
    assert run_to_resume(tmp_path / CHECKPOINTS_DIR / "step_000000200.bak") == tmp_path  # no save beside it


def test_resuming_a_run_with_a_step_link_into_another_run_is_refused_and_changes_neither(finished_run, tmp_path):
    a = shutil.copytree(finished_run, tmp_path / "A", symlinks=True)
    b = shutil.copytree(finished_run, tmp_path / "B", symlinks=True)
    link = a / CHECKPOINTS_DIR / "step_000099999"
    link.symlink_to(b / CHECKPOINTS_DIR / "step_000000200")
    before = {run: sorted(str(p) for p in run.rglob("*")) for run in (a, b)}
    metrics = (b / METRICS_JSONL).read_bytes()
    result = runner.invoke(app, ["train", "--resume", str(a), "--steps", "400", "--no-progress"])
    assert result.exit_code == 1
    assert result.output == (
        f"error: {link} leads out of {a / CHECKPOINTS_DIR} (to {b / CHECKPOINTS_DIR / 'step_000000200'}): a run's "
        "checkpoints lie in its own folder; remove it\n"
    )
    assert {run: sorted(str(p) for p in run.rglob("*")) for run in (a, b)} == before
    assert (b / METRICS_JSONL).read_bytes() == metrics


def test_a_run_whose_checkpoints_folder_is_a_link_to_scratch_resumes(finished_run, tmp_path):
    """docs/train.md's `checkpoints/` linked to scratch storage: `--resume` took the checkpoint as the scratch
    path, which lies in no run (no config.json beside it), and refused the run."""
    run = shutil.copytree(finished_run, tmp_path / "runs" / "y", symlinks=True)
    scratch = shutil.move(run / CHECKPOINTS_DIR, tmp_path / "scratch" / "y_ckpts")
    (run / CHECKPOINTS_DIR).symlink_to(os.path.relpath(scratch, run))
    result = train(TrainConfig(steps=400, out=str(run), **TINY), resume=run, progress=False)
    assert result.last_checkpoint == run / CHECKPOINTS_DIR / "step_000000400"
    assert (Path(scratch) / "step_000000400" / DOCUMENT_FILE).is_file()
    assert os.readlink(Path(scratch) / LAST) == "step_000000400"
    assert len((run / METRICS_JSONL).read_text().splitlines()) > len(
        (finished_run / METRICS_JSONL).read_text().splitlines()
    )


def test_resuming_from_inside_the_checkpoints_folder_through_a_link_into_another_run_is_refused(
    finished_run, tmp_path, monkeypatch
):
    """`cd A/checkpoints && flowrl train --resume step_…` was not confined: it continued run B."""
    a = shutil.copytree(finished_run, tmp_path / "A", symlinks=True)
    b = shutil.copytree(finished_run, tmp_path / "B", symlinks=True)
    (a / CHECKPOINTS_DIR / "step_000099999").symlink_to(b / CHECKPOINTS_DIR / "step_000000200")
    before = sorted(str(p) for p in b.rglob("*"))
    monkeypatch.chdir(a / CHECKPOINTS_DIR)
    result = runner.invoke(app, ["train", "--resume", "step_000099999", "--steps", "400", "--no-progress"])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {a / CHECKPOINTS_DIR / 'step_000099999'} leads out of ")
    assert sorted(str(p) for p in b.rglob("*")) == before


def test_flowrl_train_resumes_a_run_whose_checkpoints_folder_is_a_link(finished_run, tmp_path):
    run = shutil.copytree(finished_run, tmp_path / "runs" / "y", symlinks=True)
    scratch = shutil.move(run / CHECKPOINTS_DIR, tmp_path / "scratch" / "y_ckpts")
    (run / CHECKPOINTS_DIR).symlink_to(os.path.relpath(scratch, run))
    for path in (run, run / CHECKPOINTS_DIR / LAST):
        steps = "400" if path == run else "600"
        result = runner.invoke(app, ["train", "--resume", str(path), "--steps", steps, "--no-progress"])
        assert result.exit_code == 0, result.output
        assert f"last checkpoint {run / CHECKPOINTS_DIR / f'step_000000{steps}'};" in result.output
