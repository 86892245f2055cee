"""docs/export.md's "Exporting from Python" section is true to the code: its example runs as written
(on a small checkpoint at the path it names), every ExportConfig field and ExportReport attribute it
lists exists, and the refusal it shows happens with the message it quotes."""

from __future__ import annotations

import dataclasses
import re

from doc_pages import python_block, section
from export_fixtures import SPEC, actor_tensors

from flowrl_deploy.checkpoint import save_checkpoint
from flowrl_deploy.export import ExportConfig, ExportReport

PAGE, HEADING = "docs/export.md", "Exporting from Python"


def test_the_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    save_checkpoint(tmp_path / "runs" / "cartpole", spec=SPEC, actor=actor_tensors())
    # no notes.txt here, a newcomer's case: the example makes the file whose refusal it shows (it wrote an
    # ONNX model named notes.txt, printing no refusal)
    exec(compile(python_block(PAGE, HEADING), PAGE, "exec"), {})
    printed = capsys.readouterr().out
    assert "wrote policy.onnx (fp32, midpoint × 2 steps" in printed
    assert "notes.txt exists and is not an ONNX file: an export may replace an earlier export" in printed
    assert (tmp_path / "notes.txt").read_text() == "my notes\n" and (tmp_path / "policy.onnx").is_file()


def test_every_field_and_attribute_the_section_names_exists():
    text = section(PAGE, HEADING).split("\n## ", 1)[0]
    config_fields = {f.name for f in dataclasses.fields(ExportConfig)}
    listed = set(re.findall(r"^- `(\w+)`", text, re.MULTILINE))
    assert config_fields <= listed, config_fields - listed  # every field is documented
    report_names = {f.name for f in dataclasses.fields(ExportReport)} | {"summary()", "to_dict()"}
    for name in report_names:
        assert f"`{name}`" in text, name
