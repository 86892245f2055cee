"""`flowrl export --steps 1,2 --deterministic --report`: a sweep of graphs without a noise input
is timed on observations alone, one row per N."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from flowrl_deploy.cli import app


def test_a_deterministic_sweep_tabulates_each_n(checkpoint, tmp_path):
    out, report = tmp_path / "policy.onnx", tmp_path / "sweep.json"
    args = ["export", str(checkpoint), "--steps", "1,2", "--deterministic", "--report", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--json", str(report)])
    assert result.exit_code == 0, result.output
    table = result.output[result.output.index("   N    p50 ms") :].splitlines()
    assert [line.split()[0] for line in table[1:]] == ["1", "2"]
    rows = json.loads(report.read_text())
    assert [(r["contract"]["flow_steps"], r["contract"]["input_names"]) for r in rows] == [(1, ["obs"]), (2, ["obs"])]
    assert all(r["p50_ms"] > 0 for r in rows)
