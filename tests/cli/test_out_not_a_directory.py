"""An --out whose folder is a file is one line saying so ("Not a directory"), for `flowrl demo`
(the parent of its report folders) and `flowrl train` (the run directory)."""

import re

import pytest
from extras_needed import needs_extras
from typer.testing import CliRunner

from flowrl_deploy.cli import app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["demo", "--steps", "10", "--out", "{file}/x"],
            r"cannot create the report folder {file}/x/\d{{8}}-\d{{6}}",
            marks=needs_extras("train", "export"),
            id="demo",
        ),
        pytest.param(
            ["train", "--env", "Pendulum-v1", "--steps", "10", "--no-progress", "--out", "{file}/run"],
            "cannot create the run directory {file}/run",
            marks=needs_extras("train"),
            id="train",
        ),
    ],
)
def test_an_out_under_a_file_is_one_line(tmp_path, args, message):
    file = tmp_path / "file"
    file.write_text("kept\n")
    result = CliRunner().invoke(app, [arg.format(file=file) for arg in args])
    assert result.exit_code == 1
    assert re.fullmatch(f"error: {message.format(file=re.escape(str(file)))}: Not a directory\n", result.output)
    assert file.read_text() == "kept\n"
