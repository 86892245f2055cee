"""Where a run writes: a resume continues only the run a checkpoint lies in and never deletes its later
checkpoints; outputs that cannot be written fail before the first step; a save that fails mid-run
stops training with one clear error naming the last good checkpoint."""

import json
import re
import shutil
from pathlib import Path

import pytest
from safetensors import SafetensorError

from flowrl_deploy import checkpoint as ckpt
from flowrl_deploy.errors import CheckpointError, FlowRLError
from flowrl_deploy.train import loop
from flowrl_deploy.train.config import TrainConfig
from flowrl_deploy.train.loop import train
from flowrl_deploy.train.resume import resume_config

TINY = dict(env="Pendulum-v1", hidden=8, batch_size=8, start_steps=50, eval_every=0, save_every=100,
            log_every=50, threads=1)  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run with checkpoints at steps 100 and 200 (last)."""
    return train(TrainConfig(steps=200, out=str(tmp_path_factory.mktemp("run")), **TINY), progress=False)


def resume(checkpoint: Path, steps: int) -> loop.TrainResult:
    return train(resume_config(checkpoint, steps=steps), resume=checkpoint, progress=False)


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def no_steps(monkeypatch):
    """Fail the test if training takes a single environment step."""

    def step(*args: object) -> None:
        raise AssertionError("a training step was taken")

    monkeypatch.setattr(loop.ReplayBuffer, "add", step)


def test_a_checkpoint_copied_out_of_its_run_is_not_resumed_into_the_run_above_it(run, tmp_path):
    """The review's case: resuming backup/step_100 of a run wrote step_150 into that run and deleted
    its newer step_200. A checkpoint must lie in <run>/checkpoints/, next to <run>/config.json."""
    victim = shutil.copytree(run.run_dir, tmp_path / "victim", symlinks=True)
    backup = shutil.copytree(victim / "checkpoints" / "step_000000100", victim / "backup" / "step_000000100")
    loose = shutil.copytree(backup, tmp_path / "loose" / "a" / "myck")
    bare = shutil.copytree(victim / "checkpoints", tmp_path / "bare" / "checkpoints", symlinks=True)  # no config.json
    before = tree(tmp_path)
    for checkpoint in (backup, loose, bare / "step_000000100", bare):
        with pytest.raises(FlowRLError, match="does not lie in the checkpoints/ folder of a run directory"):
            resume(checkpoint, steps=250)
    assert tree(tmp_path) == before  # nothing written, nothing deleted


def test_later_checkpoints_of_the_run_are_refused_however_the_checkpoint_is_named(run, tmp_path):
    copy = shutil.copytree(run.run_dir, tmp_path / "copy", symlinks=True)
    before = tree(copy)
    older = copy / "checkpoints" / "step_000000100"
    for checkpoint in (older, older / ckpt.MODEL_FILE, older / ckpt.DOCUMENT_FILE):
        with pytest.raises(FlowRLError, match=re.escape("checkpoints after step_000000100 (step_000000200)")):
            resume(checkpoint, steps=150)
    assert tree(copy) == before
    resumed = resume(copy / "checkpoints" / "last" / ckpt.MODEL_FILE, steps=250)  # `last` is the newest
    assert resumed.run_dir == copy.resolve() and resumed.counters.env_steps == 250


@pytest.mark.parametrize(
    ("in_the_way", "message"),
    [
        ("checkpoints", "cannot create the checkpoints folder {out}/checkpoints: File exists"),
        ("config.json", "--out {out} is not empty and is not a flowrl run directory (it holds config.json)"),
        ("metrics.jsonl", "cannot write {out}/metrics.jsonl: Is a directory"),
        ("metrics.csv", "cannot write {out}/metrics.csv: Is a directory"),
        ("tensorboard", "cannot write {out}/tensorboard: File exists"),
    ],
)
def test_an_output_that_cannot_be_written_fails_before_the_first_step(tmp_path, no_steps, in_the_way, message):
    out = tmp_path / "run"
    out.mkdir()
    cfg = TrainConfig(steps=200, out=str(out), **TINY)
    if in_the_way != "config.json":
        cfg.save(out)  # the folder of a run that stopped before its first checkpoint: a retry may reuse it
    if in_the_way in ("checkpoints", "tensorboard"):
        (out / in_the_way).write_text("a file where a folder goes")
    else:
        (out / in_the_way).mkdir()  # a folder where a file goes
    with pytest.raises(FlowRLError, match=f"^{re.escape(message.format(out=out))}"):
        train(cfg, progress=False)
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]  # no temporary file left behind


def failing_save_file(monkeypatch, after: int) -> None:
    """Let the first ``after`` tensor files be written, then fail as `ulimit -f` or a full disk does."""
    real, calls = ckpt.save_file, []

    def save_file(*args: object, **kwargs: object) -> None:
        calls.append(args)
        if len(calls) > after:
            raise SafetensorError("Error while serializing: I/O error: File too large (os error 27)")
        real(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", save_file)


def test_a_failed_save_stops_training_and_names_the_last_good_checkpoint(monkeypatch, tmp_path):
    failing_save_file(monkeypatch, after=1)  # the step-100 checkpoint's training state (its model is bytes, cb4538f)
    out = tmp_path / "run"
    with pytest.raises(FlowRLError) as error:
        train(TrainConfig(steps=300, out=str(out), **TINY), progress=False)
    good = out / "checkpoints" / "step_000000100"
    assert str(error.value) == (
        f"cannot write the checkpoint {out}/checkpoints/step_000000200: File too large; training stopped at env step "
        f"200, and the last checkpoint saved is {good}; once the run's folder can be written again, continue with "
        f"--resume {out}"
    )
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last", "step_000000100"]  # no partial one
    monkeypatch.undo()
    assert resume(out, steps=300).counters.env_steps == 300  # the run goes on from its last good checkpoint


def test_a_run_whose_first_save_fails_says_no_checkpoint_was_saved(monkeypatch, tmp_path):
    failing_save_file(monkeypatch, after=0)
    with pytest.raises(FlowRLError, match="training stopped at env step 100, and no checkpoint was saved"):
        train(TrainConfig(steps=300, out=str(tmp_path / "run"), **TINY), progress=False)


def test_tensorboard_events_that_cannot_be_written_fail_a_run_called_inside_an_except_block(monkeypatch, tmp_path):
    """Whether the close's failure was raised came from sys.exc_info(), which inside a caller's except
    block sees the exception being handled: such a train() (a retry) returned as if its events were written."""
    from torch.utils.tensorboard import SummaryWriter

    def disk_full(self) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "close", disk_full)
    out = tmp_path / "run"
    try:
        raise RuntimeError("a first attempt failed")
    except RuntimeError:
        with pytest.raises(FlowRLError, match=f"^cannot write {re.escape(str(out / 'tensorboard'))}: No space"):
            train(TrainConfig(steps=60, out=str(out), **TINY), progress=False)


@pytest.mark.parametrize(
    "foreign",
    [
        {"config.json": '{"mine": 1}\n', "metrics.csv": "my,important,csv\n"},  # the sweep's case
        {"notes.txt": "keep me\n"},
        {"config.json": "not json"},
        {"metrics.csv": "my,important,csv\n"},  # metrics without the config.json of a run
    ],
)
def test_a_folder_that_is_not_a_run_is_refused_before_anything_is_replaced(tmp_path, no_steps, foreign):
    """--out . in a project folder replaced its config.json and metrics.csv without a word."""
    for name, text in foreign.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(FlowRLError, match=f"^--out {re.escape(str(tmp_path))} is not empty and is not a flowrl run"):
        train(TrainConfig(steps=100, out=str(tmp_path), **TINY), progress=False)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == foreign


def test_a_checkpoint_is_refused_as_the_folder_of_a_new_run(run, no_steps):
    checkpoint = run.run_dir / "checkpoints" / "step_000000100"
    before = tree(checkpoint)
    with pytest.raises(FlowRLError, match="is a checkpoint, not a run directory"):
        train(TrainConfig(steps=100, out=str(checkpoint), **TINY), progress=False)
    assert tree(checkpoint) == before


def test_a_run_that_never_saved_a_checkpoint_may_be_started_again_in_its_folder(tmp_path, monkeypatch):
    """Its leftovers (config.json, metrics, tensorboard/, a failed write's temporary file) are the
    run's own: a retry replaces config.json and the metrics, and adds to tensorboard/."""
    first = TrainConfig(steps=100, out=str(tmp_path), **TINY)
    first.save(tmp_path)
    (tmp_path / "metrics.csv").write_text("step\n")
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / ".config.json.tmp-x1y2").write_text("{")
    (tmp_path / ".gitkeep").touch()
    result = train(first.override(seed=3), progress=False)
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 3
    assert result.last_checkpoint.parent == tmp_path / "checkpoints"


def test_a_resume_whose_config_no_longer_matches_the_weights_names_the_field(run, tmp_path):
    """A hand-edited config.hidden used to dump torch's page of state_dict size mismatches."""
    copy = shutil.copytree(run.run_dir, tmp_path / "copy", symlinks=True)
    checkpoint = copy / "checkpoints" / "step_000000200"
    document = json.loads((checkpoint / ckpt.DOCUMENT_FILE).read_text())
    document["config"]["hidden"] = 16
    (checkpoint / ckpt.DOCUMENT_FILE).write_text(json.dumps(document))
    with pytest.raises(CheckpointError) as info:
        resume(checkpoint, steps=250)
    assert str(info.value) == (
        f"{checkpoint.resolve() / ckpt.DOCUMENT_FILE}: config.hidden 16 does not match the saved policy (hidden 8); "
        "the weights cannot be resumed under another config"
    )
