"""What a killed process left behind in its run folder (a save's partial checkpoint, the size of a checkpoint and its
replay buffer; the temporary files of an atomic write; a link being swapped) is removed as the next run of the folder
starts, once it holds the folder's lock: a partial checkpoint was removed only after the next successful save, which
on a tight quota never came, so every requeue trained a whole --save-every interval and failed with ENOSPC; the
others were never removed."""

import errno
import shutil

import pytest
from tiny_training import TINY, TINY_FLAGS
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.errors import CheckpointError
from flowrl_deploy.train import retention, run_lock
from flowrl_deploy.train.config import TrainConfig
from flowrl_deploy.train.loop import train
from flowrl_deploy.train.resume import resume_config

runner = CliRunner()

LEFTOVERS = {
    "checkpoints": [
        ".step_000000300.tmp-k2j4_x9q",  # a save killed while writing
        ".last.link-4242",  # killed while swapping a link
        ".best.link-4242",
        ".last.tmp-ab12cd34",  # a pointer file's atomic write (no symlinks)
        ".symlink-probe-4242",
    ],
    ".": [".config.json.tmp-p0o9i8u7", ".metrics.jsonl.tmp-abcdefgh", ".metrics.csv.tmp-12345678"],
}
KEPT = {
    "checkpoints": [".gitkeep", ".step_x.tmp-abcdefgh", ".notes.tmp-abcdefgh", ".step_000000300.tmp"],
    ".": [".gitkeep", ".last.link-4242", ".step_000000300.tmp-abcdefgh", ".config.json.tmp"],
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    train(TrainConfig(steps=200, out=str(out), **TINY), progress=False)
    return out


def plant(run, names: dict[str, list[str]]) -> list:
    planted = []
    for folder, entries in names.items():
        for name in entries:
            path = run / folder / name
            if name.startswith(".step_"):
                path.mkdir()
                (path / "model.safetensors").write_bytes(bytes(1000))
            elif "link" in name or "probe" in name:
                path.symlink_to("step_000000200" if "link" in name else ".")
            else:
                path.write_text("half")
            planted.append(path)
    return planted


def present(paths) -> list:
    return [p.name for p in paths if p.exists() or p.is_symlink()]


def watch(seen: list, paths):
    """An ``on_start`` that records which of ``paths`` are there as the run's first step comes."""
    return lambda: seen.append(present(paths))


def test_a_resume_removes_what_killed_processes_left_before_its_first_step(finished, tmp_path):
    run = shutil.copytree(finished, tmp_path / "run", symlinks=True)
    leftovers, kept = plant(run, LEFTOVERS), plant(run, KEPT)
    at_start = []
    train(
        resume_config(run, steps=300), resume=run, progress=False, on_start=lambda: at_start.append(present(leftovers))
    )
    assert at_start == [[]]
    assert present(kept) == [p.name for p in kept]  # only the names this project's writers give


def test_a_requeue_on_a_full_quota_frees_the_killed_saves_partial_checkpoint_before_it_trains(
    finished, tmp_path, monkeypatch
):
    """The save of step 300 fails while the killed save's partial checkpoint is there: a full quota."""
    run = shutil.copytree(finished, tmp_path / "run", symlinks=True)
    (partial,) = plant(run, {"checkpoints": [".step_000000300.tmp-k2j4_x9q"]})
    real_write = retention.RunCheckpoints.save

    def save(self, step, write, *, best=False):
        if partial.exists():
            raise CheckpointError(f"cannot write the checkpoint: {errno.errorcode[errno.EDQUOT]}")
        return real_write(self, step, write, best=best)

    monkeypatch.setattr(retention.RunCheckpoints, "save", save)
    result = runner.invoke(app, ["train", *TINY_FLAGS, "--steps", "300", "--out", str(run), "--resume-if-exists"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].startswith("trained 300 env steps")


def test_a_retry_of_a_run_killed_in_its_first_save_removes_its_partial_checkpoint(tmp_path):
    """No checkpoint yet: the requeue starts the run again (a retry) in the folder."""
    run = tmp_path / "run"
    TrainConfig(steps=200, out=str(run), **TINY).save(run)
    (run / "checkpoints").mkdir()
    leftovers = plant(run, LEFTOVERS)
    at_start = []
    train(
        TrainConfig(steps=100, out=str(run), **TINY),
        progress=False,
        on_start=lambda: at_start.append(present(leftovers)),
    )
    assert at_start == [[]]


def test_a_folder_refused_as_no_run_keeps_its_files(tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    (tmp_path / "notes" / ".config.json.tmp-abcdefgh").write_text("mine too")
    result = runner.invoke(app, ["train", *TINY_FLAGS, "--steps", "100", "--out", str(out)])
    assert result.exit_code == 1
    assert (out / ".config.json.tmp-abcdefgh").read_text() == "mine too"


def test_an_unlocked_run_leaves_them_alone(finished, tmp_path, monkeypatch):
    """Without a lock (an NFS without locks) another run may be writing them."""

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "flock", no_locks)
    run = shutil.copytree(finished, tmp_path / "run", symlinks=True)
    leftovers = plant(run, {"checkpoints": [".last.link-4242"], ".": [".config.json.tmp-p0o9i8u7"]})
    at_start = []
    train(
        resume_config(run, steps=300), resume=run, progress=False, on_start=lambda: at_start.append(present(leftovers))
    )
    assert at_start == [[p.name for p in leftovers]]


def test_a_replaced_checkpoint_kept_aside_is_removed_only_where_its_replacement_is_in_place(finished, tmp_path):
    run = shutil.copytree(finished, tmp_path / "run", symlinks=True)
    checkpoints = run / "checkpoints"
    replaced = shutil.copytree(checkpoints / "step_000000200", checkpoints / ".step_000000200.old-4242")
    only_copy = shutil.copytree(checkpoints / "step_000000200", checkpoints / ".step_000000100.old-4242")
    train(resume_config(run, steps=300), resume=run, progress=False)
    assert not replaced.exists() and only_copy.is_dir()
