"""A `--json` report never replaces a file larger than any report (flowrl export, flowrl control):
such a file, a long JSON-lines log say, is kept whatever its first and last characters are."""

from __future__ import annotations

import json

import pytest

from flowrl_deploy.cli import _common
from flowrl_deploy.cli._common import check_report, write_report
from flowrl_deploy.errors import FlowRLError

LIMIT = 64


@pytest.fixture(autouse=True)
def small_limit(monkeypatch):
    monkeypatch.setattr(_common, "MAX_REPORT_BYTES", LIMIT)


@pytest.mark.parametrize(
    "old",
    ['{"step": 1}\n' * 10, json.dumps({"returns": [0.5] * 20}), json.dumps([1] * 40)],
    ids=["json_lines_log", "json_object", "json_list"],
)
def test_a_file_beyond_the_limit_is_kept(tmp_path, old):
    path = tmp_path / "big.jsonl"
    path.write_text(old)
    assert len(old) > LIMIT
    message = r"--json .*big\.jsonl exists and holds more than 64 MiB, far more than a report: a report may replace"
    with pytest.raises(FlowRLError, match=message + r".*\(delete it first to replace it\); give the report another"):
        check_report("--json", path)
    with pytest.raises(FlowRLError, match=message + r".*the report was not written"):
        write_report("--json", path, {"return": 1.0})
    assert path.read_text() == old


def test_a_report_up_to_the_limit_is_replaced(tmp_path):
    path = tmp_path / "rep.json"
    path.write_text(json.dumps([{"path": "p.onnx", "contract_hash": "ab"}]).ljust(LIMIT))  # an export's report
    check_report("--json", path)
    write_report("--json", path, {"return": 1.0})
    assert json.loads(path.read_text()) == {"return": 1.0}
