"""A run folder copied with links followed (`cp -rL`, `scp -r`, `aws s3 sync`, a zip) holds `checkpoints/last` and
`checkpoints/best` as folders, copies of the step folders they named. A resume refused it with `cannot point …/best
at step_…: Is a directory`. It now makes each copy a link to its step folder again (one warning line) and resumes;
a folder that copies no step folder byte for byte is never deleted: the resume is refused, saying what to do."""

import re
import shutil
import subprocess

import pytest
from tiny_training import TINY, TINY_FLAGS
from typer.testing import CliRunner

from flowrl_deploy.checkpoint import BEST, LAST
from flowrl_deploy.cli import app
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.train import TrainConfig, resume_config, train

runner = CliRunner()


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    out = tmp_path_factory.mktemp("orig") / "run"
    train(TrainConfig(steps=400, out=str(out), **{**TINY, "save_every": 100}), progress=False)
    return out


def copied(original, tmp_path):
    if shutil.which("cp") is None:
        pytest.skip("no cp here")
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-rL", str(original), str(copy)], check=True)
    for name in (LAST, BEST):
        assert (copy / "checkpoints" / name).is_dir() and not (copy / "checkpoints" / name).is_symlink()
    return copy


def tree(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def step_folders(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted((run / "checkpoints").glob("step_*/*"))}


@pytest.mark.parametrize("how", ["run", "newest_step", "last"])
def test_a_run_copied_with_links_followed_resumes_and_gets_its_links_back(original, tmp_path, how):
    copy = copied(original, tmp_path)
    named = {name: (original / "checkpoints" / name).resolve().name for name in (LAST, BEST)}
    steps_before = step_folders(copy)
    resume = {"run": copy, "newest_step": copy / "checkpoints" / named[LAST], "last": copy / "checkpoints" / LAST}[how]
    result = runner.invoke(app, ["train", "--resume", str(resume), "--steps", "500", "--no-progress"])
    assert result.exit_code == 0, result.output
    message = (
        f"warning: {copy / 'checkpoints' / LAST} and best were folders, copies of {named[LAST]} and {named[BEST]} "
        "(the run was copied with links followed: cp -L, scp -r, a cloud sync?); they are links to them again\n"
    )
    assert message in result.output
    assert (copy / "checkpoints" / LAST).is_symlink() and (copy / "checkpoints" / LAST).resolve().name == (
        "step_000000500"
    )
    assert (copy / "checkpoints" / BEST).is_symlink()
    after = step_folders(copy)
    assert {k: v for k, v in after.items() if k in steps_before} == steps_before  # no step folder changed
    assert not [p.name for p in (copy / "checkpoints").iterdir() if ".copy" in p.name or ".link-" in p.name]


def test_a_copied_run_that_is_finished_gets_its_links_back_too(original, tmp_path):
    copy = copied(original, tmp_path)
    flags = [*TINY_FLAGS, "--save-every", "100", "--steps", "400", "--out", str(copy), "--resume-if-exists"]
    result = runner.invoke(app, ["train", *flags])
    assert result.exit_code == 0, result.output
    assert "already finished at 400 env steps" in result.output
    assert (copy / "checkpoints" / LAST).is_symlink() and (copy / "checkpoints" / BEST).is_symlink()


def test_a_folder_that_copies_no_checkpoint_is_kept_and_the_resume_says_what_to_do(original, tmp_path):
    copy = copied(original, tmp_path)
    best = copy / "checkpoints" / BEST
    (best / "model.safetensors").write_bytes((best / "model.safetensors").read_bytes()[:-1] + b"\0")  # not a copy
    before = tree(copy)
    with pytest.raises(FlowRLError) as refused:
        train(resume_config(copy, steps=500), resume=copy, progress=False)
    assert str(refused.value) == (
        f"{best} is a folder, not a link to a checkpoint (the run was copied with links followed: cp -L, scp -r, "
        "a cloud sync?), and no step_* folder beside it holds the same files, so it is not deleted: move it out of "
        f"{best.parent} (mv {best} {copy / 'best.kept'}) and resume again; {BEST} is made anew"
    )
    assert tree(copy) == before
    shutil.move(best, copy / "best.kept")
    resumed = train(resume_config(copy, steps=500), resume=copy, progress=False)
    assert resumed.counters.env_steps == 500
    assert re.fullmatch(r"step_\d{9}", (copy / "checkpoints" / BEST).resolve().name)


def test_a_kill_while_relinking_leaves_a_run_that_resumes(original, tmp_path, monkeypatch):
    from tiny_training import Killed

    from flowrl_deploy.train import retention

    copy = copied(original, tmp_path)
    with monkeypatch.context() as killing:

        def killed(directory, name, target):
            raise Killed

        killing.setattr(retention, "link_checkpoint", killed)
        with pytest.raises(Killed):
            train(resume_config(copy, steps=500), resume=copy, progress=False)
    left = [p.name for p in (copy / "checkpoints").iterdir() if ".copy-" in p.name]
    assert left and not (copy / "checkpoints" / LAST).exists()  # the copy set aside, the link not made yet
    resumed = train(resume_config(copy, steps=500), resume=copy, progress=False)
    assert resumed.counters.env_steps == 500
    assert not [p.name for p in (copy / "checkpoints").iterdir() if ".copy-" in p.name]
    assert (copy / "checkpoints" / LAST).is_symlink() and (copy / "checkpoints" / BEST).is_symlink()
