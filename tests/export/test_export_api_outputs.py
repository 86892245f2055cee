"""The Python API refuses the outputs `flowrl export` refuses: `export_checkpoint(ckpt, "obs.json")`
replaced an observation file (or notes, another project's ONNX model) with a policy, took a path ending
in a slash as a file, and `ExportConfig(batch=10**6)` was accepted; the checks lived in the CLI only.
They run before any work, name the argument (out_path), and leave the file alone."""

from __future__ import annotations

import re

import pytest
from export_fixtures import SPEC, actor_tensors

from flowrl_deploy.checkpoint import save_checkpoint
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.export import ExportConfig, export_checkpoint
from flowrl_deploy.export.config import MAX_BATCH
from flowrl_deploy.export.sweep import sweep_steps

RULE = "an export may replace an earlier export, never another file"


def no_work(*args, **kwargs):
    raise AssertionError("the export began though its output is refused")


@pytest.mark.parametrize(
    ("name", "content"),
    [("obs.json", b'{"obs": [0.1, 0.2]}\n'), ("other.onnx", b"not onnx\n"), ("notes.txt", b"my notes\n")],
)
def test_an_existing_file_that_is_not_a_policy_is_refused_and_kept(checkpoint, tmp_path, monkeypatch, name, content):
    monkeypatch.setattr("flowrl_deploy.export.exporter.load_checkpoint", no_work)
    target = tmp_path / name
    target.write_bytes(content)
    message = f"out_path {target} exists and is not an ONNX file: {RULE}; give out_path another name"
    with pytest.raises(FlowRLError, match=re.escape(message)):
        export_checkpoint(checkpoint, target, ExportConfig(verify=False))
    with pytest.raises(FlowRLError, match=re.escape(message)):
        export_checkpoint(checkpoint, str(target))
    assert target.read_bytes() == content


def test_a_path_ending_in_a_slash_is_refused(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr("flowrl_deploy.export.exporter.load_checkpoint", no_work)
    text = f"{tmp_path}/new/"
    with pytest.raises(FlowRLError, match=re.escape(f"out_path {text} ends in a slash, so it names a folder")):
        export_checkpoint(checkpoint, text)
    assert not (tmp_path / "new").exists()


def test_a_directory_is_refused_naming_the_argument(checkpoint, tmp_path):
    with pytest.raises(FlowRLError, match=f"out_path {re.escape(str(tmp_path))} is a directory; give a file path"):
        export_checkpoint(checkpoint, tmp_path)


def test_an_earlier_export_is_replaced(checkpoint, tmp_path):
    target = tmp_path / "p.onnx"
    first = export_checkpoint(checkpoint, target, ExportConfig(verify=False))
    second = export_checkpoint(checkpoint, target, ExportConfig(verify=False, steps=2))
    assert first.sha256 != second.sha256 and second.contract.flow_steps == 2


def test_a_fixed_batch_above_the_limit_is_refused():
    with pytest.raises(FlowRLError, match=f"--batch must be 'dynamic' or an integer from 1 to {MAX_BATCH}, got"):
        ExportConfig(batch=MAX_BATCH + 1)
    assert ExportConfig(batch=MAX_BATCH).batch_dim == MAX_BATCH


def test_a_sweep_checks_every_file_before_writing_the_first(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "step_1", spec=SPEC, actor=actor_tensors())
    (tmp_path / "p.n2.onnx").write_text("notes\n")
    flag = f"the sweep's file (from out_path {tmp_path / 'p.onnx'}) {tmp_path / 'p.n2.onnx'}"
    with pytest.raises(FlowRLError, match=re.escape(f"{flag} exists and is not an ONNX file: {RULE}")):
        sweep_steps(checkpoint, tmp_path / "p.onnx", ExportConfig(verify=False), [1, 2])
    assert not (tmp_path / "p.n1.onnx").exists()
    assert (tmp_path / "p.n2.onnx").read_text() == "notes\n"
