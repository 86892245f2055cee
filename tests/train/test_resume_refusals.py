"""Resuming a checkpoint whose files cannot be resumed is one error naming the file, and changes
nothing: a newer format, no saved config, a NaN setting, a corrupt training_state.json."""

import math
import re

import pytest
from test_train_hand_edited_checkpoint import edited, resume, run  # noqa: F401 (run: a fixture)

from flowrl_deploy.checkpoint import FORMAT_VERSION, TRAINING_JSON_FILE
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.train.resume import resume_config


def _tree(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d.update(format_version=99),
            "{checkpoint}/checkpoint.json: format_version 99 was written by a newer flowrl-deploy (this version "
            f"reads up to {FORMAT_VERSION}); upgrade flowrl-deploy",
        ),
        (lambda d: d.update(config={}), "{checkpoint} holds no training config, so it cannot be resumed"),
        (
            lambda d: d["config"].update(lr=math.nan),
            "{checkpoint}/checkpoint.json: config.lr must be a finite number, got nan",
        ),
    ],
    ids=["newer_format", "no_config", "nan_lr"],
)
def test_a_checkpoint_json_that_cannot_be_resumed_is_named(run, tmp_path, edit, message):  # noqa: F811
    checkpoint = edited(run, tmp_path, edit)
    with pytest.raises(FlowRLError, match=f"^{re.escape(message.format(checkpoint=checkpoint))}$"):
        resume_config(checkpoint, steps=150)


def test_a_corrupt_training_state_json_is_named_and_the_run_is_unchanged(run, tmp_path):  # noqa: F811
    checkpoint = edited(run, tmp_path, lambda d: None)
    (checkpoint / TRAINING_JSON_FILE).write_text("{not json")
    before = _tree(tmp_path / "copy")
    message = f"{checkpoint} is damaged: {TRAINING_JSON_FILE} is not valid JSON (Expecting property name"
    with pytest.raises(FlowRLError, match=f"^{re.escape(message)}"):
        resume(checkpoint)
    assert _tree(tmp_path / "copy") == before
