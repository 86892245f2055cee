"""`flowrl export` and `flowrl inspect` through Typer's CliRunner."""

from __future__ import annotations

import errno
import json
import os
from dataclasses import replace

import numpy as np
import pytest
from export_fixtures import SPEC
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.policy import OnnxPolicy

runner = CliRunner()


def test_export_then_inspect(checkpoint, tmp_path):
    out = tmp_path / "policy.onnx"
    result = runner.invoke(app, ["export", str(checkpoint), "--steps", "4", "--solver", "euler", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output and "max |Δaction|" in result.output
    policy = OnnxPolicy(out, providers=["CPUExecutionProvider"])
    assert (policy.contract.flow_steps, policy.contract.solver) == (4, "euler")

    text = runner.invoke(app, ["inspect", str(out)])
    assert text.exit_code == 0, text.output
    for expected in (policy.contract_hash, "hip, knee, ankle", "position[3], velocity[2]", "euler × 4 steps",
                     "obs ['batch', 5]", "noise ['batch', 3]", "action ['batch', 3]", "[0, 4]",
                     "(absolute), max |Δpre_tanh|"):  # fmt: skip
        assert expected in text.output

    help_text = " ".join(runner.invoke(app, ["inspect", "--help"]).output.split())
    assert "units" not in help_text  # it promised units, which a contract does not record
    for shown in ("observation", "action", "bounds", "control period", "noise"):  # what the help promises
        assert shown in help_text and shown in text.output

    info = json.loads(runner.invoke(app, ["inspect", str(out), "--json"]).output)
    assert info["contract_hash"] == policy.contract_hash
    assert info["contract"]["action_names"] == list(SPEC.action_names)
    assert [i["name"] for i in info["inputs"]] == ["obs", "noise"]
    assert info["provenance"]["export_config"]["steps"] == 4


def test_without_steps_or_solver_the_checkpoints_own_are_exported(checkpoint, tmp_path):
    out = tmp_path / "policy.onnx"
    result = runner.invoke(app, ["export", str(checkpoint), "--out", str(out)])
    assert result.exit_code == 0, result.output
    contract = OnnxPolicy(out, providers=["CPUExecutionProvider"]).contract
    assert (contract.flow_steps, contract.solver) == (SPEC.flow_steps, SPEC.solver) == (1, "midpoint")


def test_export_option_defaults_are_the_configs(checkpoint, tmp_path, monkeypatch):
    """`flowrl export` without options exports what ExportConfig() does (steps: the checkpoint's N)."""
    from flowrl_deploy.export import ExportConfig

    seen = {}

    def fake_export(checkpoint_path, out_path, config):
        seen.update(config=config)
        raise SystemExit(0)

    monkeypatch.setattr("flowrl_deploy.export.export_checkpoint", fake_export)
    result = runner.invoke(app, ["export", str(checkpoint), "--out", str(tmp_path / "p.onnx")])
    assert result.exit_code == 0, result.output
    assert seen["config"] == replace(ExportConfig(), steps=SPEC.flow_steps)


def test_export_options_reach_the_config(checkpoint, tmp_path, monkeypatch):
    seen = {}

    def fake_export(checkpoint_path, out_path, config):
        seen.update(config=config, out=out_path)
        raise SystemExit(0)

    monkeypatch.setattr("flowrl_deploy.export.export_checkpoint", fake_export)
    args = ["export", str(checkpoint), "--out", str(tmp_path / "p.onnx"), "--steps", "7", "--opset", "19",
            "--batch", "8", "--deterministic", "--no-optimize", "--solver", "midpoint"]  # fmt: skip
    runner.invoke(app, args)
    config = seen["config"]
    assert (config.steps, config.opset, config.batch, config.deterministic) == (7, 19, 8, True)
    assert (config.optimize, config.solver, config.dtype) == (False, "midpoint", "fp32")


def test_deterministic_export_has_no_noise_input(checkpoint, tmp_path):
    out = tmp_path / "det.onnx"
    assert runner.invoke(app, ["export", str(checkpoint), "--deterministic", "--out", str(out)]).exit_code == 0
    policy = OnnxPolicy(out, providers=["CPUExecutionProvider"])
    assert not policy.takes_noise
    obs = np.ones((2, SPEC.obs_dim), np.float32)
    np.testing.assert_array_equal(policy.act(obs)[0], policy.act(obs)[1])


def test_steps_sweep_writes_one_file_per_n_and_a_table(checkpoint, tmp_path):
    out = tmp_path / "policy.onnx"
    report = tmp_path / "sweep.json"
    args = ["export", str(checkpoint), "--steps", "1,3", "--report", "--out", str(out), "--json", str(report)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "policy.n1.onnx").is_file() and (tmp_path / "policy.n3.onnx").is_file()
    assert "p50 ms" in result.output and "max |Δaction| abs" in result.output
    rows = json.loads(report.read_text())
    assert [r["contract"]["flow_steps"] for r in rows] == [1, 3]
    assert all(r["p50_ms"] > 0 and r["mean_return"] is None for r in rows)


def test_a_report_of_one_n_writes_the_out_file_itself(checkpoint, tmp_path):
    out = tmp_path / "policy.onnx"
    result = runner.invoke(app, ["export", str(checkpoint), "--steps", "2", "--report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["policy.onnx"] and "p50 ms" in result.output


def test_a_json_report_on_the_onnx_file_is_refused_through_a_link(checkpoint, tmp_path):
    """Both files replace a link at their path, so the report would replace the graph just written."""
    (tmp_path / "x.onnx").symlink_to("y.onnx")
    args = ["export", str(checkpoint), "--out", str(tmp_path / "x.onnx"), "--json", str(tmp_path / "x.onnx")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "is also the ONNX file to write" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.onnx"] and (tmp_path / "x.onnx").is_symlink()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "{tmp}/missing"], "checkpoint not found"),
        (["export", "{tmp}", "--out", "{tmp}/p.onnx"], "holds no flowrl-deploy checkpoint"),
        (["export", "{ckpt}", "--steps", "ten"], "--steps takes a number"),
        (["export", "{ckpt}", "--steps", "0"], "--steps must be integers from 1 to 1000"),
        (["export", "{ckpt}", "--steps", "100000"], "--steps must be integers from 1 to 1000"),
        (["export", "{ckpt}", "--steps", "1,5,1"], "--steps lists a value twice"),
        (["export", "{ckpt}", "--batch", "100000000"], "an integer from 1 to 65536"),
        (["export", "{ckpt}", "--out", "{tmp}/p.onnx", "--episodes", "3"], "apply to the --report table only"),
        (["export", "{ckpt}", "--out", "{ckpt}/model.safetensors"], "lies inside the checkpoint"),
        (["export", "{ckpt}", "--out", "{tmp}/fifo"], "fifo exists and is not a regular file"),  # as /dev/null
        (["export", "{ckpt}", "--out", "{tmp}/p.onnx", "--json", "{tmp}/p.onnx"], "is also the ONNX file to write"),
        (
            ["export", "{ckpt}", "--out", "{tmp}/p.onnx", "--json", "{ckpt}/checkpoint.json"],
            "lies inside the checkpoint",
        ),
        (["export", "{ckpt}", "--batch", "many"], "--batch takes 'dynamic'"),
        (["export", "{ckpt}", "--opset", "12"], "--opset must be >= 13"),
        (["export", "{ckpt}", "--opset", "99", "--out", "{tmp}/p.onnx"], "opset 99 is newer than this onnx"),
        (["export", "{ckpt}", "--out", "{tmp}"], "is a directory"),
        (["export", "{ckpt}", "--out", "{tmp}/p.onnx", "--seed", "-1"], "--seed must lie in [0, 2**32)"),
        (["export", "{ckpt}", "--out", "{tmp}/p.onnx", "--seed", "4294967296"], "2**32), got 4294967296"),
        (["export", "{ckpt}", "--out", "{tmp}/p.onnx", "--report", "--episodes", "-1"], "--episodes must be >= 0"),
        (["export", "{ckpt}", "--out", "{tmp}/p.onnx", "--json", "{tmp}"], "--json {tmp} is a directory"),
        (["inspect", "{tmp}/missing.onnx"], "ONNX model not found"),
        (["inspect", "{ckpt}"], "is a directory, not an ONNX file"),
        (["inspect", "{ckpt}/model.safetensors"], "model.safetensors is a checkpoint's weights (safetensors)"),
        (["inspect", "/dev/null"], "/dev/null is not a regular file (a device, pipe or socket), so not an ONNX model"),
        (["inspect", "{tmp}/fifo"], "fifo is not a regular file"),
        (["eval", "{tmp}/fifo"], "fifo is not a regular file"),  # read as an ONNX file, never opened (it would block)
        (["eval", "{tmp}/missing.onnx"], "policy not found: {tmp}/missing.onnx"),
    ],
)
def test_user_errors_exit_1_with_a_message(checkpoint, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, ckpt=checkpoint) for a in args]
    os.mkfifo(tmp_path / "fifo")
    before = {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.is_file()}
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert message.format(tmp=tmp_path) in result.output
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.is_file()} == before  # nothing lost
    assert (tmp_path / "fifo").is_fifo()
    assert "Traceback" not in result.output


def test_inspect_refuses_an_onnx_file_without_a_contract(tmp_path, checkpoint):
    import onnx

    from flowrl_deploy.export import ExportConfig, export_checkpoint

    report = export_checkpoint(checkpoint, tmp_path / "p.onnx", ExportConfig(steps=1, samples=3))
    model = onnx.load(report.path)
    del model.metadata_props[:]
    onnx.save(model, tmp_path / "bare.onnx")
    result = runner.invoke(app, ["inspect", str(tmp_path / "bare.onnx")])
    assert result.exit_code == 1 and "no flowrl policy contract" in result.output


def test_inspect_needs_neither_torch_nor_onnx(checkpoint, tmp_path):
    """A robot computer has onnxruntime but no torch or onnx; `flowrl inspect` must still work there."""
    import subprocess
    import sys

    from flowrl_deploy.export import ExportConfig, export_checkpoint

    report = export_checkpoint(checkpoint, tmp_path / "p.onnx", ExportConfig(steps=1, samples=3))
    code = (
        "import sys; sys.modules.update(torch=None, onnx=None)\n"
        "from typer.testing import CliRunner\n"
        "from flowrl_deploy.cli import app\n"
        f"print(CliRunner().invoke(app, ['inspect', {str(report.path)!r}]).output)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"contract     {report.contract_hash}" in result.stdout


def test_out_under_a_file_is_one_clear_line(checkpoint, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    result = runner.invoke(
        app, ["export", str(checkpoint), "--steps", "2", "--out", str(tmp_path / "notes.txt/p.onnx")]
    )
    assert result.exit_code == 1
    assert "is a file" in result.output and "Traceback" not in result.output
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_a_failed_verification_keeps_the_old_file(checkpoint, tmp_path, monkeypatch):
    from tiny_policy import write_policy

    from flowrl_deploy.export import verify

    out = write_policy(tmp_path / "policy.onnx")  # the policy on the robot: an export may replace it
    before = out.read_bytes()

    def fail(*args, **kwargs):
        raise verify.VerificationError("the exported graph does not match the torch sampler")

    monkeypatch.setattr(verify, "verify_parity", fail)
    result = runner.invoke(app, ["export", str(checkpoint), "--steps", "2", "--out", str(out)])
    assert result.exit_code == 1
    assert "does not match the torch sampler" in result.output and "Traceback" not in result.output
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.onnx"]


def test_a_fixed_batch_sweep_says_its_latency_is_per_call_of_that_many_rows(checkpoint, tmp_path):
    """A --batch 256 table read '2.379 ms' next to a dynamic export's 0.037 ms under the same 'p50 ms'."""
    args = ["export", str(checkpoint), "--steps", "1,2", "--report", "--no-verify", "--out", str(tmp_path / "p.onnx")]
    fixed = runner.invoke(app, [*args, "--batch", "4"])
    assert fixed.exit_code == 0, fixed.output
    assert "latency: p50/p99 of one call of 4 rows (a --batch 4 graph)" in fixed.stdout
    dynamic = runner.invoke(app, args)
    assert dynamic.exit_code == 0 and "latency: p50/p99 of one call of 1 row (batch 1)" in dynamic.stdout


def test_a_json_report_that_cannot_be_written_says_the_export_itself_was(checkpoint, tmp_path, monkeypatch):
    """A full disk at --json said only '--json: cannot write …': a script took the verified export for failed."""
    from flowrl_deploy import atomic
    from flowrl_deploy.cli import _common

    write_text_atomic = _common.write_text_atomic

    def on_a_full_disk(path, text):
        def full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(atomic.os, "fsync", full)  # the report's write alone: policy.onnx is written by now
        write_text_atomic(path, text)

    monkeypatch.setattr(_common, "write_text_atomic", on_a_full_disk)
    out, report = tmp_path / "p.onnx", tmp_path / "rep.json"
    result = runner.invoke(app, ["export", str(checkpoint), "--steps", "2", "--out", str(out), "--json", str(report)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output.splitlines()[-1] == (
        f"error: wrote {out}, but --json: cannot write {report}: No space left on device"
    )
    assert OnnxPolicy(out).contract.flow_steps == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.onnx"]  # no report, not even a cut-off one


@pytest.mark.parametrize("steps", ["2", "1,2"])
def test_json_dash_prints_the_report_alone_on_stdout_and_the_summary_on_stderr(
    checkpoint, tmp_path, steps, monkeypatch
):
    """`--json -` wrote a file named '-': a pipeline (`| jq .[0].contract_hash`) had no way to the report."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "p.onnx"
    result = runner.invoke(app, ["export", str(checkpoint), "--steps", steps, "--out", str(out), "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # nothing else on stdout
    assert [entry["contract_hash"] for entry in report] == [
        OnnxPolicy(path).contract_hash for path in sorted(tmp_path.glob("p*.onnx"))
    ]
    assert "PASSED" in result.stderr and not (tmp_path / "-").exists()
