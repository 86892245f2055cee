"""`--dtype int8 --report` puts fp32 next to int8, as issue 4 asked ("its action error and its eval
return next to fp32's in the report, never silently"): the table printed the int8 row alone, so its
return had nothing to be compared with. Each N gets an fp32 reference row (exported to a temporary
file, not written beside --out), in the table and in the --json report; `flowrl eval` says a file is int8."""

from __future__ import annotations

import json

from export_fixtures import actor_tensors
from typer.testing import CliRunner

from flowrl_deploy.checkpoint import save_checkpoint
from flowrl_deploy.cli import app
from flowrl_deploy.export import ExportConfig, export_checkpoint
from flowrl_deploy.spec import PolicySpec

runner = CliRunner()
CARTPOLE = PolicySpec(
    obs_dim=5, act_dim=1, action_low=(-1.0,), action_high=(1.0,), hidden=32, env_id="dmc:cartpole-swingup"
)


def test_an_int8_report_shows_fp32s_error_and_return_next_to_int8s(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "ck", spec=CARTPOLE, actor=actor_tensors(CARTPOLE))
    out, report = tmp_path / "out" / "p.onnx", tmp_path / "out" / "r.json"
    args = ["export", str(checkpoint), "--dtype", "int8", "--steps", "1", "--report", "--episodes", "2"]
    result = runner.invoke(app, [*args, "--out", str(out), "--json", str(report)])
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines() if line.strip().startswith("1 ")]
    assert len(lines) == 2, result.stdout  # the int8 row, then fp32's
    assert lines[0][-2:] == [str(out), "(int8)"] and lines[1][-4:] == ["fp32", "reference", "(not", "written)"]
    (row,) = json.loads(report.read_text())
    reference = row["fp32_reference"]
    assert row["provenance"]["dtype"] == "int8" and reference["dtype"] == "fp32"
    assert reference["parity"]["max_abs_error_action"] < row["parity"]["max_abs_error_action"]
    assert reference["mean_return"] is not None and reference["p50_ms"] > 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["p.onnx", "r.json"]  # no fp32 file beside it


def test_an_fp32_report_has_no_reference_row(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "ck", spec=CARTPOLE, actor=actor_tensors(CARTPOLE))
    report = tmp_path / "r.json"
    args = ["export", str(checkpoint), "--report", "--out", str(tmp_path / "p.onnx"), "--json", str(report)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "reference" not in result.stdout
    assert json.loads(report.read_text())[0]["fp32_reference"] is None


def test_eval_labels_an_int8_file_as_int8(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "ck", spec=CARTPOLE, actor=actor_tensors(CARTPOLE))
    int8 = export_checkpoint(checkpoint, tmp_path / "i8.onnx", ExportConfig(dtype="int8", samples=3)).path
    fp32 = export_checkpoint(checkpoint, tmp_path / "f.onnx", ExportConfig(samples=3)).path
    result = runner.invoke(app, ["eval", str(int8), "--episodes", "1"])
    assert result.exit_code == 0, result.output
    assert "(N=1 midpoint, int8)" in result.stdout
    result = runner.invoke(app, ["eval", str(fp32), "--episodes", "1"])
    assert result.exit_code == 0 and "(N=1 midpoint)" in result.stdout
