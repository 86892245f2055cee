"""A --save-replay run kept the whole replay buffer in every periodic checkpoint, each as it was at its step, and
kept them all: disk quadratic in the run's length (~50 GB of replays for a 1M-step dog-run saved every 20 000
steps). A save now keeps the buffer only where a resume may need it, in `last` and the checkpoint before it (the
fallback where `last` is damaged), and drops it from older ones, noting why; those stay intact, and a branch
from one resumes with an empty buffer and a warning saying so."""

import logging
import shutil

import numpy as np
import pytest
from tiny_training import TINY, Killed

from flowrl_deploy.checkpoint import checkpoint_damage, load_checkpoint, step_of
from flowrl_deploy.train import TrainConfig, resume_config, retention, train
from flowrl_deploy.train.resume import resume_warnings

REPLAY = "replay.safetensors"
DROPPED = "replay.dropped"


def replays(run) -> dict[str, bool]:
    """Each checkpoint of ``run`` by name: whether it holds its replay buffer."""
    return {
        p.name: (p / REPLAY).is_file()
        for p in sorted((run / "checkpoints").glob("step_*"))
        if step_of(p.name) is not None
    }


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "flowrl.train"]


def test_a_run_keeps_its_replay_buffer_only_in_last_and_the_checkpoint_before_it(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(steps=500, out=str(run), save_replay=True, **{**TINY, "save_every": 100}), progress=False)
    assert replays(run) == {
        "step_000000100": False,
        "step_000000200": False,
        "step_000000300": False,
        "step_000000400": True,
        "step_000000500": True,
    }
    for checkpoint in (run / "checkpoints").glob("step_*"):
        assert checkpoint_damage(checkpoint) is None, checkpoint  # intact, with or without its buffer
        assert (checkpoint / DROPPED).is_file() is not (checkpoint / REPLAY).is_file()
    note = (run / "checkpoints" / "step_000000200" / DROPPED).read_text()
    assert note.startswith("replay.safetensors (") and "deleted to save disk when step_000000400 was saved" in note
    best = (run / "checkpoints" / "best").resolve()  # best is no exception: it loads for eval/export as before
    assert load_checkpoint(best).actor and (best / REPLAY).is_file() is (
        best.name in ("step_000000400", "step_000000500")
    )


def test_a_resume_from_last_restores_the_buffer_exactly_and_drops_the_older_ones(tmp_path):
    """Saved on episode boundaries (Pendulum: 200 steps), so a resumed run is the uninterrupted one."""
    cfg = dict(save_replay=True, **TINY)  # save_every 200
    half = train(TrainConfig(steps=600, out=str(tmp_path / "half"), **cfg), progress=False)
    assert replays(half.run_dir) == {"step_000000200": False, "step_000000400": True, "step_000000600": True}
    whole = train(TrainConfig(steps=800, out=str(tmp_path / "whole"), **cfg), progress=False)
    resumed = train(resume_config(half.run_dir, steps=800), resume=half.run_dir, progress=False)
    assert (
        replays(resumed.run_dir)
        == replays(whole.run_dir)
        == {
            "step_000000200": False,
            "step_000000400": False,
            "step_000000600": True,
            "step_000000800": True,
        }
    )
    a, b = (load_checkpoint(r.last_checkpoint, training_state=True) for r in (whole, resumed))
    assert a.counters == b.counters and a.training_json == b.training_json
    assert sorted(a.replay) == sorted(b.replay) and a.replay["obs"].shape[0] == 800
    for name in a.replay:
        np.testing.assert_array_equal(a.replay[name], b.replay[name], err_msg=name)
    for key in a.training_tensors:
        np.testing.assert_array_equal(a.training_tensors[key], b.training_tensors[key], err_msg=key)


def test_a_stripped_older_checkpoint_is_not_set_aside_and_a_branch_from_it_says_why_its_buffer_is_empty(
    tmp_path, caplog
):
    run = tmp_path / "run"
    train(TrainConfig(steps=400, out=str(run), save_replay=True, **{**TINY, "save_every": 100}), progress=False)
    assert replays(run)["step_000000200"] is False
    branch = shutil.copytree(run, tmp_path / "branch", symlinks=True)  # as docs/train.md says to branch
    for name in ("step_000000300", "step_000000400"):
        shutil.rmtree(branch / "checkpoints" / name)
    start = branch / "checkpoints" / "step_000000200"
    with caplog.at_level(logging.WARNING, logger="flowrl.train"):
        resumed = train(resume_config(start, steps=300), resume=start, progress=False)
    assert resumed.counters.env_steps == 300 and start.is_dir() and checkpoint_damage(start) is None
    assert not list((branch / "checkpoints").glob("*.damaged*"))
    said = warnings_of(caplog)
    assert said[0] == (
        "the replay buffer of step_000000200 was dropped to save disk (a run keeps it only in last and the "
        "checkpoint before it): it restarts empty, and updates wait until it holds 100 transitions"
    ), said
    assert [line for line in said[1:] if "replay" in line or "damaged" in line] == [], said  # best's move aside
    assert replays(branch) == {"step_000000100": False, "step_000000200": False, "step_000000300": True}
    assert not (start / REPLAY).is_file() and (start / DROPPED).is_file()  # what the save would keep is kept as is


def test_a_damaged_last_falls_back_to_the_checkpoint_before_it_with_its_buffer(tmp_path, caplog):
    run = tmp_path / "run"
    train(TrainConfig(steps=300, out=str(run), save_replay=True, **{**TINY, "save_every": 100}), progress=False)
    assert replays(run) == {"step_000000100": False, "step_000000200": True, "step_000000300": True}
    damaged = run / "checkpoints" / "step_000000300" / "training_state.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:1000])  # cut short
    with caplog.at_level(logging.WARNING, logger="flowrl.train"):
        resumed = train(resume_config(run, steps=400), resume=run, progress=False)
    assert resumed.counters.env_steps == 400
    said = warnings_of(caplog)
    assert not [line for line in said if "replay buffer" in line], said  # the fallback held its buffer
    assert any("step_000000300 is damaged" in line for line in said), said
    assert (run / "checkpoints" / "step_000000300.damaged" / REPLAY).is_file()  # set aside whole, as before
    assert replays(run) == {  # resumed from step_000000200, which drops at the save of 400
        "step_000000100": False,
        "step_000000200": False,
        "step_000000300": True,
        "step_000000400": True,
    }


def test_a_kill_while_dropping_a_buffer_leaves_every_checkpoint_resumable(monkeypatch, tmp_path, caplog):
    """Killed after the note is written and before the buffer is deleted: the buffer is still there, and a resume
    from it (a branch) restores it without a word; the next save drops it."""
    run = tmp_path / "run"

    def killed(path):
        raise Killed

    monkeypatch.setattr(retention, "fsync_dir", killed)
    with pytest.raises(Killed):
        train(TrainConfig(steps=400, out=str(run), save_replay=True, **{**TINY, "save_every": 100}), progress=False)
    monkeypatch.undo()
    assert replays(run) == {"step_000000100": True, "step_000000200": True, "step_000000300": True}
    assert (run / "checkpoints" / "last").resolve().name == "step_000000300"
    older = run / "checkpoints" / "step_000000100"
    assert (older / DROPPED).is_file() and checkpoint_damage(older) is None
    cfg = resume_config(run)
    assert resume_warnings(older, cfg, cfg)[0] is None  # its buffer is there: it is restored
    with caplog.at_level(logging.WARNING, logger="flowrl.train"):
        resumed = train(resume_config(run, steps=400), resume=run, progress=False)
    assert resumed.counters.env_steps == 400 and warnings_of(caplog) == []
    assert replays(run) == {
        "step_000000100": False,
        "step_000000200": False,
        "step_000000300": True,
        "step_000000400": True,
    }


def test_a_note_that_cannot_be_written_leaves_neither_a_note_nor_a_lost_buffer(monkeypatch, tmp_path):
    """A full disk as the note was written left an empty or cut-off `replay.dropped` beside the buffer it kept."""
    import errno
    import os

    checkpoint = tmp_path / "step_000000100"
    checkpoint.mkdir()
    (checkpoint / REPLAY).write_bytes(b"buffer")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    retention._drop_replay(checkpoint, "step_000000300")
    monkeypatch.undo()
    assert sorted(p.name for p in checkpoint.iterdir()) == [REPLAY]  # kept for the next save to try again
