"""A run whose newest checkpoint is damaged (a tensor file cut short or zeroed, a document lost: a full disk while
copying, a lossy network file system, files deleted) resumes from its newest intact checkpoint, in one warning line
naming the damaged one, what is wrong and the steps to redo, and keeps the damaged one as `step_….damaged`: the
resume was refused, and each message sent the user to a command that failed again. Where nothing intact is left,
one line names the files and changes nothing."""

import logging
import os
import shlex
import shutil

import pytest
from tiny_training import TINY, TINY_FLAGS, linked
from typer.testing import CliRunner

from flowrl_deploy.checkpoint import DOCUMENT_FILE, MODEL_FILE, TRAINING_JSON_FILE, TRAINING_TENSORS_FILE
from flowrl_deploy.cli import app
from flowrl_deploy.errors import CheckpointError
from flowrl_deploy.train.config import TrainConfig
from flowrl_deploy.train.loop import train
from flowrl_deploy.train.resume import resume_config, run_to_resume

runner = CliRunner()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run of 600 steps: checkpoints 200, 400 and 600 (each evaluated; best at one of them)."""
    out = tmp_path_factory.mktemp("run") / "run"
    train(TrainConfig(steps=600, out=str(out), **TINY), progress=False)
    return out


@pytest.fixture
def run(finished, tmp_path):
    return shutil.copytree(finished, tmp_path / "run", symlinks=True)


def tree(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def resumed(run, *args):
    return runner.invoke(app, ["train", "--resume", str(run), "--steps", "800", "--no-progress", *args])


def test_a_truncated_newest_checkpoint_is_kept_aside_and_the_run_resumes_from_the_one_before(run):
    newest = run / "checkpoints" / "step_000000600"
    whole = (newest / TRAINING_TENSORS_FILE).stat().st_size
    truncate(newest / TRAINING_TENSORS_FILE, whole - 1000)
    damaged = tree(newest)
    result = resumed(run)
    assert result.exit_code == 0, result.output
    assert (
        f"warning: {newest} is damaged: {TRAINING_TENSORS_FILE} is cut short ({whole - 1000} of {whole} bytes); it is "
        "kept as "
        "step_000000600.damaged, and the run resumes from step_000000400 (200 env steps to redo)"
    ) in result.output.splitlines()
    assert not [line for line in result.output.splitlines() if " points at " in line]  # last: no second line
    assert result.output.splitlines()[-1].startswith("trained 800 env steps")
    assert tree(run / "checkpoints" / "step_000000600.damaged") == damaged  # never deleted, never changed
    assert linked(run, "last") == "step_000000800"
    assert (run / "checkpoints" / "best").resolve().is_dir()


@pytest.mark.parametrize("name", [MODEL_FILE, TRAINING_TENSORS_FILE])
def test_a_zeroed_tensor_file_is_damage(run, name):
    path = run / "checkpoints" / "step_000000600" / name
    path.write_bytes(bytes(path.stat().st_size))
    result = resumed(run)
    assert result.exit_code == 0, result.output
    assert f"is damaged: {name} has no valid header (zeroed or overwritten?)" in result.output


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda c: (c / DOCUMENT_FILE).unlink(), f"it has no {DOCUMENT_FILE} (files deleted, or a copy cut short?)"),
        (lambda c: (c / DOCUMENT_FILE).write_bytes(b""), f"{DOCUMENT_FILE} is not valid JSON (Expecting value"),
        (lambda c: (c / TRAINING_JSON_FILE).write_bytes(bytes(100)), f"{TRAINING_JSON_FILE} is not valid JSON ("),
        (lambda c: (c / MODEL_FILE).unlink(), f"{MODEL_FILE} is missing"),
    ],
    ids=["no_document", "empty_document", "zeroed_training_json", "no_model"],
)
def test_a_lost_or_unreadable_file_is_damage_too(run, damage, why):
    """A folder without its document (a half-copied run) was refused by `--resume RUN` with the advice to run
    `--resume RUN`."""
    damage(run / "checkpoints" / "step_000000600")
    result = resumed(run)
    assert result.exit_code == 0, result.output
    assert f"warning: {run / 'checkpoints' / 'step_000000600'} is damaged: {why}" in result.output
    assert (run / "checkpoints" / "step_000000600.damaged").is_dir()


def test_the_checkpoint_before_a_damaged_one_may_be_resumed_by_name(run):
    """It was refused: 'holds checkpoints after step_000000400 (step_000000600) …; continue the run with
    --resume RUN', which failed on the damaged one."""
    truncate(run / "checkpoints" / "step_000000600" / MODEL_FILE, 100)
    assert run_to_resume(run / "checkpoints" / "step_000000400") == run
    result = resumed(run / "checkpoints" / "step_000000400")
    assert result.exit_code == 0, result.output
    assert (run / "checkpoints" / "step_000000600.damaged").is_dir()


def test_resuming_a_damaged_checkpoint_by_name_says_the_command_that_works(run):
    newest = run / "checkpoints" / "step_000000600"
    truncate(newest / MODEL_FILE, 100)
    before = tree(run)
    result = resumed(newest)
    assert result.exit_code == 1
    (line,) = result.output.splitlines()
    assert line.startswith(f"error: {newest} is damaged: {MODEL_FILE} is cut short (100 bytes, not even its ")
    assert line.endswith(
        "resume the run instead, from its newest intact checkpoint step_000000400, which leaves this one aside: "
        f"flowrl train --resume {shlex.quote(str(run))}"
    )
    assert tree(run) == before
    assert resumed(run).exit_code == 0  # that command


def test_a_run_with_no_intact_checkpoint_is_one_line_naming_the_files_and_changes_nothing(run):
    for step in (200, 400, 600):
        truncate(run / "checkpoints" / f"step_{step:09d}" / TRAINING_TENSORS_FILE, 0)
    before = tree(run)
    result = resumed(run)
    assert result.exit_code == 1
    assert result.output == (
        f"error: {run / 'checkpoints'} holds no intact checkpoint to resume (step_000000600: {TRAINING_TENSORS_FILE} "
        f"is cut short (0 bytes, not even its header); step_000000400: {TRAINING_TENSORS_FILE} is cut short (0 bytes, "
        f"not even its header); step_000000200: {TRAINING_TENSORS_FILE} is cut short (0 bytes, not even its header)); "
        "restore one from a copy of the run, or start the run again in a new folder (flowrl train … --out "
        "NEW_FOLDER)\n"
    )
    assert tree(run) == before


def test_the_library_resume_falls_back_too_and_logs_it(run, caplog):
    truncate(run / "checkpoints" / "step_000000600" / MODEL_FILE, 100)
    with caplog.at_level(logging.WARNING, logger="flowrl.train"):
        result = train(resume_config(run, steps=800), resume=run, progress=False)
    assert result.counters.env_steps == 800
    replay, warning = [r.getMessage() for r in caplog.records if r.name == "flowrl.train"]
    assert replay.startswith("the replay buffer was not saved (--save-replay)")  # the run's checkpoints have none
    assert warning.startswith(f"{run / 'checkpoints' / 'step_000000600'} is damaged: {MODEL_FILE} is cut short")
    assert warning.endswith("it is kept as step_000000600.damaged, and the run resumes from step_000000400 (200 env "
                            "steps to redo)")  # fmt: skip


def test_a_requeue_of_a_finished_run_whose_final_checkpoint_is_damaged_redoes_its_last_steps(run):
    truncate(run / "checkpoints" / "step_000000600" / MODEL_FILE, 100)
    result = runner.invoke(app, ["train", *TINY_FLAGS, "--steps", "600", "--out", str(run), "--resume-if-exists"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].startswith("trained 600 env steps")
    assert linked(run, "last") == "step_000000600" and (run / "checkpoints" / "step_000000600.damaged").is_dir()


def test_a_checkpoint_whose_contents_fail_to_load_says_how_to_set_it_aside(run):
    """Whole files with wrong contents (a training state without its agent) pass the structure check: the
    refusal says the command that sets the checkpoint aside, and resuming again then goes on from the one before."""
    newest = run / "checkpoints" / "step_000000600"
    (newest / TRAINING_JSON_FILE).write_text("{}")
    result = resumed(run)
    assert result.exit_code == 1
    (line,) = result.output.splitlines()
    aside = newest.with_name("step_000000600.damaged")
    command = (
        f"mv {shlex.quote(str(newest))} {shlex.quote(str(aside))} && flowrl train --resume {shlex.quote(str(run))}"
    )
    assert line.startswith(f"error: {newest}: training state is incomplete or malformed")
    assert line.endswith(f"; if it is damaged, set it aside and resume the run from step_000000400: {command}")
    os.replace(newest, aside)
    assert resumed(run).exit_code == 0


def test_a_damaged_checkpoint_named_with_nothing_intact_before_it_is_refused_in_one_line(run):
    for step in (200, 400, 600):
        (run / "checkpoints" / f"step_{step:09d}" / MODEL_FILE).unlink()
    with pytest.raises(CheckpointError, match="; no other checkpoint of the run is intact: restore it from a copy"):
        resume_config(run / "checkpoints" / "step_000000400")
