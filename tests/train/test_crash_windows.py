"""A run killed between saving a checkpoint and moving its links (a SIGKILL, an OOM kill, a lost node:
the window includes an fsync, slow on NFS/Lustre) resumes with the same `--resume RUN`, from its newest
complete checkpoint, and never loses its best one. The kill is simulated by an exception no handler
catches, raised where the link would move."""

import json
import os
from pathlib import Path

import pytest
from intact_checkpoint import intact_checkpoint
from tiny_training import TINY, TINY_FLAGS, Killed, kill_when_linking, linked
from typer.testing import CliRunner

from flowrl_deploy.checkpoint import (
    BEST,
    DOCUMENT_FILE,
    LAST,
    link_checkpoint,
    read_document,
    resolve_checkpoint,
    resume_point,
)
from flowrl_deploy.cli import app
from flowrl_deploy.train import loop
from flowrl_deploy.train.config import ConfigError, TrainConfig
from flowrl_deploy.train.evaluate import EvalResult
from flowrl_deploy.train.loop import train
from flowrl_deploy.train.resume import resume_config
from flowrl_deploy.train.retention import RunCheckpoints

runner = CliRunner()


def test_a_kill_between_saving_and_moving_last_resumes_from_the_newest_checkpoint(monkeypatch, tmp_path):
    out = tmp_path / "run"
    kill_when_linking(monkeypatch, LAST, 400)
    with pytest.raises(Killed):
        train(TrainConfig(steps=600, out=str(out), **TINY), progress=False)
    monkeypatch.undo()
    assert linked(out, LAST) == "step_000000200"  # one behind the complete step_000000400
    assert read_document(out / "checkpoints" / "step_000000400")["counters"]["env_steps"] == 400

    assert resume_config(out).steps == 600  # the library's resume takes the run too
    result = runner.invoke(app, ["train", "--resume", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output  # it was refused: 'holds checkpoints after step_000000200'
    assert [line for line in result.output.splitlines() if line.startswith("warning:")] == [
        "warning: the replay buffer was not saved (--save-replay): it restarts empty, and updates wait until it holds "
        "100 transitions",
        f"warning: {out / 'checkpoints' / 'last'} points at step_000000200, not at the newest complete checkpoint "
        "step_000000400 (the run was killed between saving a checkpoint and moving last?); last now names it",
    ]  # once: the command and the library each knew of last
    assert linked(out, LAST) == "step_000000600"
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps.count(200) == steps.count(400) == steps.count(600) == 3  # none twice


def test_a_kill_before_the_first_link_resumes_the_run_it_saved(monkeypatch, tmp_path, caplog):
    """No `last` at all: the run directory 'held no checkpoint', and a new run on it was refused too. The
    library's resume says it moves `last` (it did so silently; only flowrl train said it), and moves it before
    its first step: until its first save, `flowrl serve RUN --watch`, eval and export take the resumed model."""
    out = tmp_path / "run"
    kill_when_linking(monkeypatch, LAST, 200)
    with pytest.raises(Killed):
        train(TrainConfig(steps=400, out=str(out), **TINY), progress=False)
    monkeypatch.undo()
    assert not (out / "checkpoints" / "last").exists()
    at_start = []
    with caplog.at_level("WARNING", logger="flowrl.train"):
        resumed = train(
            resume_config(out), resume=out, progress=False, on_start=lambda: at_start.append(linked(out, LAST))
        )
    assert at_start == ["step_000000200"]
    assert resumed.counters.env_steps == 400 and linked(out, LAST) == "step_000000400"
    assert [r.getMessage() for r in caplog.records if r.name == "flowrl.train"] == [
        "the replay buffer was not saved (--save-replay): it restarts empty, and updates wait until it holds 100 "
        "transitions",  # as flowrl train says it (only the command said it)
        f"{out / 'checkpoints' / 'last'} is missing, not at the newest complete checkpoint step_000000200 (the run "
        "was killed between saving a checkpoint and moving last?); last now names it",
    ]


def fake_returns(monkeypatch, returns: dict[int, float]) -> None:
    """Each evaluation at step s returns ``returns[s]`` (sampled and zero noise alike)."""

    def fake_evaluate(agent, eval_env, cfg, step, deterministic=False, stop=None):
        return EvalResult(returns[step], 0.0, (returns[step],), (200,), (False,))

    monkeypatch.setattr(loop, "_evaluate", fake_evaluate)


def killed_while_linking(monkeypatch, out: Path, link: str, step: int = 400) -> None:
    """Trains 600 steps (evaluations, no periodic saves) into ``out``, killed as ``link`` moves at ``step``."""
    cfg = TrainConfig(steps=600, out=str(out), **{**TINY, "save_every": 0})
    with monkeypatch.context() as killing:
        kill_when_linking(killing, link, step)
        with pytest.raises(Killed):
            train(cfg, progress=False)


def test_a_kill_between_best_and_last_keeps_the_best_checkpoint(monkeypatch, tmp_path):
    """`best` moved after `last`: killed in between at a new best, the run resumed with that best return
    recorded but `best` naming an older checkpoint, so `best` never moved again and the real best, not being
    periodic, was pruned. Now `best` moves first."""
    fake_returns(monkeypatch, {200: 1.0, 400: 5.0, 600: 3.0, 800: 2.0})
    out = tmp_path / "run"
    killed_while_linking(monkeypatch, out, LAST)
    assert linked(out, BEST) == "step_000000400"

    result = runner.invoke(app, ["train", "--resume", str(out), "--steps", "800", "--save-every", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].endswith("best eval return 5.0")
    assert linked(out, BEST) == "step_000000400" and linked(out, LAST) == "step_000000800"
    assert read_document(out / "checkpoints" / BEST)["eval"]["best_return"] == 5.0


def step_folders(run, complete: list[int], incomplete: list[int] = ()) -> Path:
    """A run's checkpoints folder with ``step_`` folders, each complete one holding only its document (all
    that :func:`resume_point` reads); no ``last``."""
    checkpoints = run / "checkpoints"
    for step in incomplete:
        (checkpoints / f"step_{step:09d}").mkdir(parents=True)
    for step in complete:
        intact_checkpoint(checkpoints / f"step_{step:09d}")
    return checkpoints


def test_resuming_the_checkpoints_folder_of_a_run_killed_before_its_first_link_finds_its_checkpoint(tmp_path):
    """`--resume RUN/checkpoints` is the run, as `--resume RUN` is: the same recovery from the newest one."""
    checkpoints = step_folders(tmp_path, [200])
    assert resume_point(checkpoints) == (
        (checkpoints / "step_000000200").resolve(),
        f"{checkpoints / 'last'} is missing, not at the newest complete checkpoint step_000000200 (the run was "
        "killed between saving a checkpoint and moving last?); last now names it",
    )


def test_a_step_folder_without_its_document_is_not_resumed(tmp_path):
    """A `step_` folder missing its document (files deleted, a run copied half-way; a save renames its folder
    into place whole) is not the newest checkpoint: `last`, at the newest complete one, is resumed."""
    checkpoints = step_folders(tmp_path, [200, 400], incomplete=[600, 999999999])
    link_checkpoint(checkpoints, LAST, checkpoints / "step_000000400")
    assert resume_point(tmp_path) == ((checkpoints / "step_000000400").resolve(), None)


def test_a_kill_before_best_moves_to_a_new_best_is_repaired_at_the_resume_and_never_pruned(monkeypatch, tmp_path):
    """Killed after the checkpoint of a new best was in place but before `best` moved (a SIGKILL, a second Ctrl-C,
    a symlink refused on a full inode table): the resume moved only `last`, the resumed counters held the new best
    return so `best` never moved again, and pruning deleted the real best, which no link named."""
    fake_returns(monkeypatch, {200: 1.0, 400: 5.0, 600: 3.0, 800: 2.0})
    out = tmp_path / "run"
    killed_while_linking(monkeypatch, out, BEST)
    assert linked(out, BEST) == linked(out, LAST) == "step_000000200"

    result = runner.invoke(app, ["train", "--resume", str(out), "--steps", "800", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (
        f"warning: {out / 'checkpoints' / 'best'} pointed at step_000000200, not at step_000000400, the checkpoint "
        "whose evaluation returned the most (5; the run was killed between saving it and moving best?); best now "
        "names it"
    ) in result.output.splitlines()
    assert linked(out, BEST) == "step_000000400" and linked(out, LAST) == "step_000000800"
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["best", "last", "step_000000400", "step_000000800"]
    assert read_document(out / "checkpoints" / BEST)["eval"]["last_return"] == 5.0


def test_a_save_moves_a_stale_best_and_its_pruning_keeps_the_best_evaluated_checkpoint(tmp_path):
    """Every save, not only a new best's, points `best` at the checkpoint whose own evaluation is the highest
    (the later one of a tie); a checkpoint that records an earlier step's evaluation is no candidate."""

    def saved(own: float | None, returns_at: int | None = None):
        def write(path):
            step = int(path.name[5:])
            path.mkdir()
            at = step if returns_at is None else returns_at
            document = {"counters": {"env_steps": step}, "eval": {"last_return": own, "last_step": at}}
            (path / DOCUMENT_FILE).write_text(json.dumps(document))

        return write

    checkpoints = RunCheckpoints(tmp_path, save_every=0)
    checkpoints.save(200, saved(1.0), best=True)
    checkpoints.save(300, saved(9.0, returns_at=250))  # its return is step 250's policy's, not its own
    checkpoints.save(400, saved(5.0))  # the new best, saved without best=True (as if best's move was lost)
    assert linked(tmp_path, BEST) == "step_000000400"
    checkpoints.save(600, saved(5.0))  # a tie: the later one
    assert linked(tmp_path, BEST) == "step_000000600"
    checkpoints.save(800, saved(2.0))
    assert linked(tmp_path, BEST) == "step_000000600" and linked(tmp_path, LAST) == "step_000000800"
    assert sorted(p.name for p in checkpoints.dir.iterdir()) == ["best", "last", "step_000000600", "step_000000800"]


def test_a_checkpoint_records_the_step_of_its_evaluation(monkeypatch, tmp_path):
    fake_returns(monkeypatch, {200: 5.0, 400: 1.0})
    out = tmp_path / "run"
    train(TrainConfig(steps=500, out=str(out), **{**TINY, "save_every": 300}), progress=False)
    evals = {p.name: read_document(p)["eval"] for p in sorted((out / "checkpoints").glob("step_*"))}
    assert evals == {
        "step_000000200": {"best_return": 5.0, "last_return": 5.0, "last_step": 200},
        "step_000000300": {"best_return": 5.0, "last_return": 5.0, "last_step": 200},
        "step_000000500": {"best_return": 5.0, "last_return": 1.0, "last_step": 400},
    }
    assert linked(out, BEST) == "step_000000200"  # not 300, which records 200's return but was not evaluated


def test_a_save_whose_links_fail_names_the_checkpoint_it_wrote_as_the_last_saved(monkeypatch, tmp_path):
    """The checkpoint is complete and a resume continues it: the error named the one before it."""
    import errno

    from flowrl_deploy.errors import CheckpointError, FlowRLError
    from flowrl_deploy.train import retention

    real = retention.link_checkpoint

    def link(directory, name, target):
        if Path(target).name == "step_000000400":
            raise CheckpointError(f"cannot point {directory}/{name} at step_000000400: {os.strerror(errno.ENOSPC)}")
        real(directory, name, target)

    monkeypatch.setattr(retention, "link_checkpoint", link)
    out = tmp_path / "run"
    with pytest.raises(FlowRLError) as error:
        train(TrainConfig(steps=600, out=str(out), **TINY), progress=False)
    assert str(error.value).endswith(
        f"training stopped at env step 400, and the last checkpoint saved is {out / 'checkpoints' / 'step_000000400'}; "
        f"once the run's folder can be written again, continue with --resume {out}"
    )


@pytest.mark.parametrize("killed_at", [BEST, LAST])
def test_a_kill_in_the_final_saves_window_is_repaired_before_the_run_is_called_finished(
    monkeypatch, tmp_path, killed_at
):
    """Killed after the final checkpoint was in place but before its links moved, a requeue said 'already
    finished' (exit 0) and every refusal left `last` (and `best`) on the older checkpoint: `flowrl eval`, export
    and serve of the run took the older policy, for good."""
    fake_returns(monkeypatch, {200: 1.0, 400: 2.0, 600: 3.0})
    out = tmp_path / "run"
    with monkeypatch.context() as killing:
        kill_when_linking(killing, killed_at, 600)
        with pytest.raises(Killed):
            train(TrainConfig(steps=600, out=str(out), **TINY), progress=False)
    assert linked(out, LAST) == "step_000000400"

    flags = [*TINY_FLAGS, "--steps", "600", "--out", str(out)]
    result = runner.invoke(app, ["train", *flags, "--resume-if-exists"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"{out} already finished at 600 env steps (--steps 600)"
    assert f"warning: {out / 'checkpoints' / 'last'} points at step_000000400, not at the newest" in result.output
    assert linked(out, LAST) == linked(out, BEST) == "step_000000600"
    assert resolve_checkpoint(out) == (out / "checkpoints" / "step_000000600").resolve()


def test_a_refused_resume_of_a_finished_run_repairs_its_links_first(monkeypatch, tmp_path):
    """`flowrl train --resume RUN` and the library's resume of a finished run are refused; `last` moves first."""
    out = tmp_path / "run"
    with monkeypatch.context() as killing:
        kill_when_linking(killing, LAST, 400)
        with pytest.raises(Killed):
            train(TrainConfig(steps=400, out=str(out), **TINY), progress=False)
    result = runner.invoke(app, ["train", "--resume", str(out), "--no-progress"])
    assert result.exit_code == 1 and "already finished at 400 env steps" in result.output
    assert linked(out, LAST) == "step_000000400"

    link_checkpoint(out / "checkpoints", LAST, out / "checkpoints" / "step_000000200")
    with pytest.raises(ConfigError, match="already finished at 400 env steps"):
        train(resume_config(out), resume=out, progress=False)
    assert linked(out, LAST) == "step_000000400"
