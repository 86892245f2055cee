"""`--json` reports (flowrl export, flowrl control) are written beside the path and renamed onto it:
a symlink at the path is replaced, never written through, and a failed write changes nothing."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from flowrl_deploy.cli._common import check_report, check_writable, write_report
from flowrl_deploy.errors import FlowRLError

REPORT = {"return": 1.5, "steps": [1, 2]}


@pytest.fixture
def weights(tmp_path) -> Path:
    """A checkpoint's weights, which a link named like a report may point at."""
    path = tmp_path / "ck" / "model.safetensors"
    path.parent.mkdir()
    path.write_bytes(b"precious weights")
    return path


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_a_link_at_the_path_is_replaced_not_written_through(tmp_path, weights):
    report = tmp_path / "ex" / "rep.json"
    report.parent.mkdir()
    report.symlink_to(weights)
    check_writable("--json", report)
    write_report("--json", report, REPORT)
    assert weights.read_bytes() == b"precious weights"
    assert not report.is_symlink() and json.loads(report.read_text()) == REPORT
    assert _leftovers(report.parent) == []


def test_a_dangling_link_is_neither_followed_nor_removed_by_the_check(tmp_path):
    report = tmp_path / "rep.json"
    report.symlink_to(tmp_path / "elsewhere.json")
    check_writable("--json", report)
    assert report.is_symlink() and not (tmp_path / "elsewhere.json").exists()
    assert _leftovers(tmp_path) == []


def test_a_new_report_gets_the_umasks_permissions(tmp_path, umask_027):
    report = tmp_path / "new" / "rep.json"
    write_report("--json", report, REPORT)
    assert stat.S_IMODE(report.stat().st_mode) == 0o640
    assert json.loads(report.read_text()) == REPORT


def test_a_failed_write_leaves_the_old_report_and_no_temporary_file(tmp_path):
    report, old = tmp_path / "rep.json", '[{"path": "p.onnx", "contract_hash": "ab"}]'  # an export's report
    report.write_text(old)
    with pytest.raises(TypeError):
        write_report("--json", report, {"not json": object()})
    assert report.read_text() == old and _leftovers(tmp_path) == []


def test_a_failed_rename_is_one_line_naming_the_flag_and_leaves_no_temporary_file(tmp_path):
    report = tmp_path / "rep.json"
    (report / "inside").mkdir(parents=True)  # made a directory after the check: the rename fails
    with pytest.raises(FlowRLError, match=r"^--json: cannot write .*rep\.json: "):
        write_report("--json", report, REPORT)
    assert _leftovers(tmp_path) == []


def test_a_folder_that_is_a_file_is_named(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(FlowRLError, match=r"part of its folder .* is a file"):
        check_writable("--json", tmp_path / "file" / "rep.json")


@pytest.mark.parametrize(
    "old",
    [
        '{"server": "h:1", "env_id": "dmc:a-b", "hz": 50, "deadline_ms": 20, "steps": 5, "deadline_misses": 0}\n',
        '[{"path": "p.onnx", "contract_hash": "ab"}]',
        "",
        "\n",
    ],
    ids=["control", "export", "empty", "newline"],
)  # JSON that is no flowrl report (too deep for json.loads among them): test_report_replace.py
def test_a_report_replaces_an_earlier_report_or_an_empty_file(tmp_path, old):
    report = tmp_path / "rep.json"
    report.write_text(old)
    check_report("--json", report)
    write_report("--json", report, REPORT)
    assert json.loads(report.read_text()) == REPORT


@pytest.mark.parametrize("old", [b"\x08\x07onnx graph", b"step,return\n1,2\n", b'{"a": 1}\n{"a": 2}\n', b"{\xff}"])
def test_a_file_that_is_not_a_report_is_never_replaced(tmp_path, old):
    """An ONNX model, a CSV, a run's metrics.jsonl, bytes that are not UTF-8: checked before the
    work (check_report), and again by write_report for a command that checked only check_writable."""
    path = tmp_path / "policy.onnx"
    path.write_bytes(old)
    message = r"--json .*policy\.onnx exists and is not a JSON document: a report may replace an earlier report"
    with pytest.raises(FlowRLError, match=message + r".*give the report another name"):
        check_report("--json", path)
    with pytest.raises(FlowRLError, match=message + r".*the report was not written"):
        write_report("--json", path, REPORT)
    assert path.read_bytes() == old and _leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["config.json", "metrics.jsonl"])  # a checkpoint's own: check_writable refuses
def test_a_run_or_checkpoint_json_file_is_never_replaced_though_it_is_json(tmp_path, name):
    """`flowrl control --json run/config.json` replaced a run's config: JSON, but not a report."""
    path = tmp_path / name
    path.write_text('{"hidden": 256}\n')
    message = rf"--json .*{re.escape(name)} is the name of a training run's or checkpoint's own file \({name}\)"
    with pytest.raises(FlowRLError, match=message + r": a report may replace an earlier report"):
        check_report("--json", path)
    with pytest.raises(FlowRLError, match=message + r".*the report was not written"):
        write_report("--json", path, REPORT)
    assert path.read_text() == '{"hidden": 256}\n'


def test_a_report_named_like_an_input_is_refused_but_a_link_to_it_is_replaced(tmp_path, weights):
    with pytest.raises(FlowRLError, match=r"^--json .*model\.safetensors is also the --local-model file; give"):
        check_report("--json", tmp_path / "ck" / ".." / "ck" / "model.safetensors", {"--local-model": weights})
    link = tmp_path / "rep.json"
    link.symlink_to(weights)
    check_report("--json", link, {"--local-model": weights, "--tls-ca": ""})
    write_report("--json", link, REPORT)
    assert weights.read_bytes() == b"precious weights" and json.loads(link.read_text()) == REPORT
