"""Branching a run from an earlier checkpoint (its `best`, after the last one collapsed): the refusal to resume a
checkpoint with later ones beside it said "copy the run directory and resume the copy", which met the same
refusal in the copy. It now says to delete the copy's later checkpoints first, and that advice, followed to the
letter, works."""

import re
import shutil

import pytest
from tiny_training import TINY

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.train import TrainConfig, resume_config, train


def test_the_advice_to_branch_a_run_from_an_earlier_checkpoint_works(tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(steps=400, out=str(run), **{**TINY, "save_every": 100}), progress=False)
    older = run / "checkpoints" / "step_000000200"
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    with pytest.raises(FlowRLError) as refused:
        train(resume_config(older, steps=300), resume=older, progress=False)
    message = str(refused.value)
    assert message.endswith(
        f"continue the run with --resume {run} (from step_000000400), or branch it from step_000000200: copy the "
        "run directory, delete the copy's checkpoints listed here, and resume the copy's checkpoints/step_000000200"
    ), message
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before

    branch = shutil.copytree(run, tmp_path / "branch", symlinks=True)  # cp -a
    listed = re.search(r"checkpoints after step_000000200 \(([^)]*)\)", message)[1].split(", ")
    assert listed == ["step_000000300", "step_000000400"]
    for name in listed:
        shutil.rmtree(branch / "checkpoints" / name)
    start = branch / "checkpoints" / "step_000000200"
    resumed = train(resume_config(start, steps=300), resume=start, progress=False)
    assert resumed.counters.env_steps == 300 and (branch / "checkpoints" / "last").resolve().name == "step_000000300"
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before
