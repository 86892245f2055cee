"""`flowrl query` refuses an observation nested deeper than a batch [[..], ..] in one line, before
NumPy sees it (NumPy 2 builds up to 64 dimensions of lists and then fails past 32, a traceback)."""

from __future__ import annotations

import numpy as np
import pytest
from closed_port import closed_address
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.cli.query import read_observation

runner = CliRunner()
TOO_DEEP = "must be a list [..] or a batch [[..], ..], got lists nested deeper than a batch"


def _nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


@pytest.mark.parametrize(
    "text",
    [_nested(3), _nested(33), _nested(64), _nested(100), "[[1, 2], [3, [4]]]"],
    ids=["depth3", "depth33", "depth64", "depth100", "one_deep_leaf"],
)
@pytest.mark.parametrize("flag", ["--obs", "--obs-file"])
def test_lists_nested_deeper_than_a_batch_are_one_line(tmp_path, text, flag):
    path = tmp_path / "obs.json"
    path.write_text(text)
    value = str(path) if flag == "--obs-file" else text
    result = runner.invoke(app, ["query", "--server", closed_address(), flag, value])
    assert result.exit_code == 1
    source = f"--obs-file {path}" if flag == "--obs-file" else "--obs"
    assert result.output == f"error: {source} {TOO_DEEP}\n"


def test_an_npy_of_more_than_two_dimensions_is_refused(tmp_path):
    np.save(tmp_path / "obs.npy", np.zeros((1, 1, 3), np.float32))
    result = runner.invoke(app, ["query", "--server", closed_address(), "--obs-file", str(tmp_path / "obs.npy")])
    assert result.exit_code == 1
    assert result.output == f"error: --obs-file {tmp_path / 'obs.npy'} {TOO_DEEP} (an array of shape [1, 1, 3])\n"


@pytest.mark.parametrize(("text", "shape"), [("[1, 2, 3]", (3,)), ("[[1, 2, 3], [4, 5, 6]]", (2, 3))])
def test_an_observation_and_a_batch_are_taken(text, shape):
    assert read_observation(text, None).shape == shape
