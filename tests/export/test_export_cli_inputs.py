"""`flowrl export` and `flowrl eval` refuse bad input before any work: an N out of range (given or
the checkpoint's own), an output of a sweep or a run that cannot or must not be written, an --env
that does not fit the policy."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from export_fixtures import SPEC, actor_tensors
from typer.testing import CliRunner

from flowrl_deploy.checkpoint import DOCUMENT_FILE, link_checkpoint, save_checkpoint
from flowrl_deploy.cli import app
from flowrl_deploy.cli._common import NOT_A_REPORT
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.export import ExportConfig, export_checkpoint
from flowrl_deploy.onnxfile import unlike_a_flowrl_policy
from flowrl_deploy.spec import MAX_FLOW_STEPS

runner = CliRunner()
HUGE_N = 100_000
"""A flow step count a checkpoint may carry (hand-edited, or trained before the cap): minutes to unroll."""


def edited_checkpoint(checkpoint: Path, copy: Path, **spec) -> Path:
    """A copy of ``checkpoint`` at ``copy`` whose checkpoint.json has the ``spec`` fields changed (by hand)."""
    edited = Path(shutil.copytree(checkpoint, copy))
    document = json.loads((edited / DOCUMENT_FILE).read_text())
    document["spec"].update(spec)
    (edited / DOCUMENT_FILE).write_text(json.dumps(document))
    return edited


@pytest.fixture
def huge_n_checkpoint(checkpoint: Path, tmp_path: Path) -> Path:
    """A copy of the fixture checkpoint whose checkpoint.json says N = HUGE_N."""
    return edited_checkpoint(checkpoint, tmp_path / "huge", flow_steps=HUGE_N)


def refuse(*args, **kwargs):
    raise AssertionError("work began on refused input")


def refused(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output, result.output


def test_a_checkpoint_n_beyond_the_limit_is_refused_before_building(huge_n_checkpoint, tmp_path, monkeypatch):
    """`flowrl export RUN` and `flowrl serve RUN` (no --steps: the checkpoint's N) built for minutes."""
    from flowrl_deploy.export import export_for_serving

    monkeypatch.setattr("flowrl_deploy.export.graph.build_policy_graph", refuse)
    monkeypatch.setattr("flowrl_deploy.train.evaluate.checkpoint_act_fn", refuse)
    out = tmp_path / "p.onnx"
    message = f"flow_steps must lie in [1, {MAX_FLOW_STEPS}], got {HUGE_N}"
    refused(["export", str(huge_n_checkpoint), "--out", str(out)], message)
    refused(["eval", str(huge_n_checkpoint), "--episodes", "1"], message)
    with pytest.raises(FlowRLError, match=re.escape(message)):  # the library call `flowrl serve RUN` makes
        export_for_serving(huge_n_checkpoint, tmp_path / "served.onnx", None)
    assert not out.exists()


def test_a_given_n_beyond_the_limit_is_refused_in_export_and_eval(checkpoint, monkeypatch):
    monkeypatch.setattr("flowrl_deploy.train.evaluate.checkpoint_act_fn", refuse)
    with pytest.raises(FlowRLError, match=re.escape(f"--steps must lie in [1, {MAX_FLOW_STEPS}], got 1001")):
        ExportConfig(steps=MAX_FLOW_STEPS + 1)
    assert ExportConfig(steps=MAX_FLOW_STEPS).steps == MAX_FLOW_STEPS
    refused(
        ["eval", str(checkpoint), "--flow-steps", str(MAX_FLOW_STEPS + 1)],
        f"--flow-steps must lie in [1, {MAX_FLOW_STEPS}], got 1001",
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"action_low": [-1e39, 0.0, -2.0], "action_high": [1e39, 4.0, -1.5]}, "action_low[0] = -1e+39 does not fit"),
        ({"action_low": [-1e308, 0.0, -2.0], "action_high": [1e308, 4.0, -1.5]}, "action_low[0] = -1e+308 does not"),
        (
            {"noise_clip": 1e300},
            "noise_clip must fit float32 (<= 3.403e+38), in which the noise is clamped, got 1e+300",
        ),
    ],
)
def test_a_checkpoint_float32_cannot_run_is_refused_before_building(checkpoint, tmp_path, monkeypatch, spec, message):
    """Bounds of ±1e39 exported with --no-verify to a graph that outputs only NaN; a noise_clip of
    1e300 crashed export (and eval, serve) with torch's RuntimeError traceback."""
    monkeypatch.setattr("flowrl_deploy.export.graph.build_policy_graph", refuse)
    edited, out = edited_checkpoint(checkpoint, tmp_path / "edited", **spec), tmp_path / "p.onnx"
    refused(["export", str(edited), "--out", str(out), "--no-verify"], message)
    assert not out.exists()


def test_an_opset_onnxruntime_cannot_run_is_refused_before_building(checkpoint, tmp_path, monkeypatch):
    """onnx 1.23 knows opsets 27 and 28, which onnxruntime 1.31 does not run (28 needs IR version
    14, 27 is still under development): they failed only at verification, with onnxruntime's raw
    error. The newest that both run exports; with --no-verify (a graph for a newer onnxruntime on
    the robot) only onnx's own limit holds."""
    import onnx
    import onnxruntime

    from flowrl_deploy.export.config import MIN_OPSET
    from flowrl_deploy.export.graph import newest_opset
    from flowrl_deploy.ort import make_session

    newest, known, out = newest_opset(), onnx.defs.onnx_opset_version(), tmp_path / "p.onnx"
    assert MIN_OPSET < newest <= known
    result = runner.invoke(app, ["export", str(checkpoint), "--out", str(out), "--opset", str(newest)])
    assert result.exit_code == 0 and "PASSED" in result.output, result.output
    make_session(out, providers=["CPUExecutionProvider"])
    out.unlink()
    if newest < known:
        args = ["export", str(checkpoint), "--out", str(out), "--opset", str(known), "--no-verify"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and onnx.load(out).opset_import[0].version == known, result.output
        out.unlink()
    monkeypatch.setattr("flowrl_deploy.export.graph.build_policy_graph", refuse)
    both = f"this onnx ({onnx.__version__}) and onnxruntime ({onnxruntime.__version__}) both support"
    for opset in range(newest + 1, known + 2):
        args = ["export", str(checkpoint), "--out", str(out), "--opset", str(opset)]
        refused(args, f"--opset {opset} is newer than {both}; use {MIN_OPSET}..{newest}")
    args = ["export", str(checkpoint), "--out", str(out), "--opset", str(known + 1), "--no-verify"]
    refused(args, f"--opset {known + 1} is newer than this onnx ({onnx.__version__}) knows; use {MIN_OPSET}..{known}")
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "{tmp}/j/y.onnx", "--json", "{tmp}/j/"], "--json {tmp}/j/ ends in a slash, so it names a folder"),
        (["--out", "{tmp}/j/"], "--out {tmp}/j/ ends in a slash, so it names a folder; give a file path such as"),
    ],
)
def test_an_output_ending_in_a_slash_is_refused_as_a_folder(checkpoint, tmp_path, args, message):
    """`--json j/` (j made by `--out j/y.onnx`) passed the early check, as Path drops the slash, and
    failed after the export; `--out j/` wrote the file j."""
    refused(["export", str(checkpoint), *(a.format(tmp=tmp_path) for a in args)], message.format(tmp=tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("blocker", ["directory", "fifo"])
def test_a_sweep_checks_every_file_before_the_first_export(checkpoint, tmp_path, blocker):
    """With ex/c.n2.onnx unwritable, `--steps 1,2` used to write ex/c.n1.onnx and then fail."""
    folder = tmp_path / "ex"
    folder.mkdir()
    if blocker == "directory":
        (folder / "c.n2.onnx").mkdir()
    else:
        os.mkfifo(folder / "c.n2.onnx")
    out, report = folder / "c.onnx", folder / "c.json"
    args = ["export", str(checkpoint), "--out", str(out), "--steps", "1,2", "--json", str(report)]
    message = "is a directory" if blocker == "directory" else "exists and is not a regular file"
    refused(args, f"the sweep's file (from --out {out}) {folder / 'c.n2.onnx'} {message}")
    assert [p.name for p in folder.iterdir()] == ["c.n2.onnx"]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A training run's directory: config, metrics, checkpoints/step_1 and checkpoints/last."""
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "step_1", spec=SPEC, actor=actor_tensors())
    link_checkpoint(run / "checkpoints", "last", run / "checkpoints" / "step_1")
    for name in ("config.json", "metrics.jsonl", "metrics.csv"):
        (run / name).write_text(f"the run's {name}\n")
    return run


def run_files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "{run}/config.json"], "--out {run}/config.json is config.json of the run {run}"),
        (["--out", "{tmp}/p.onnx", "--json", "{run}/metrics.jsonl"], "--json {run}/metrics.jsonl is metrics.jsonl"),
        (["--out", "{tmp}/link.onnx"], "is metrics.csv of the run"),  # a link into the run is followed
        (["--out", "{run}/tensorboard/events.onnx"], "is tensorboard/events.onnx of the run"),
    ],
)
def test_outputs_that_are_files_of_the_run_are_refused(run_dir, tmp_path, args, message):
    """`--out run/config.json` used to replace the run's config with ONNX bytes, `--json
    run/metrics.jsonl` its training metrics."""
    (tmp_path / "link.onnx").symlink_to(run_dir / "metrics.csv")
    (run_dir / "tensorboard").mkdir()
    (run_dir / "tensorboard" / "events.onnx").write_text("the run's own file\n")
    before = run_files(run_dir)
    fill = {"run": run_dir, "tmp": tmp_path}
    refused(["export", str(run_dir), *(a.format(**fill) for a in args)], message.format(**fill))
    assert run_files(run_dir) == before
    assert not (tmp_path / "p.onnx").exists()


def test_a_new_file_in_the_run_directory_may_be_written_and_written_again(run_dir):
    out = run_dir / "policy.onnx"
    for _ in range(2):  # an earlier export beside the run's files is the user's to replace
        result = runner.invoke(app, ["export", str(run_dir), "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert out.is_file()
    with pytest.raises(FlowRLError, match=re.escape("is config.json of the run")):  # the library call refuses the same
        export_checkpoint(run_dir, run_dir / "config.json", ExportConfig(samples=3))
    (run_dir / "config.json").unlink()  # checkpoints/ without config.json: a folder of checkpoints, not a run
    with pytest.raises(FlowRLError, match=re.escape("metrics.csv exists and is not an ONNX file")):  # not the run's
        export_checkpoint(run_dir, run_dir / "metrics.csv", ExportConfig(samples=3))
    (run_dir / "metrics.csv").write_bytes(b"")  # an empty file holds nothing to lose
    export_checkpoint(run_dir, run_dir / "metrics.csv", ExportConfig(samples=3))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ("garbage", "cannot parse env id 'garbage'"),
        ("Pendulum-v1", "Pendulum-v1 has obs/act dims 3/1, the policy 5/3"),
    ],
)
def test_an_env_given_to_report_is_checked_without_episodes(checkpoint, tmp_path, env, message):
    """A latency-only --report (no --episodes) used to ignore its --env."""
    out = tmp_path / "new" / "sub" / "p.onnx"  # checking the outputs made no folder either
    refused(
        ["export", str(checkpoint), "--out", str(out), "--report", "--env", env, "--json", str(out) + ".json"], message
    )
    assert list(tmp_path.iterdir()) == []


def test_a_report_onto_a_file_that_is_not_a_report_is_refused_before_exporting(run_dir, tmp_path):
    """`--json other.onnx` replaced another policy file with the report, after the export's work."""
    other = tmp_path / "other.onnx"
    other.write_bytes(b"\x08\x09an onnx model")
    out = tmp_path / "p.onnx"
    refused(["export", str(run_dir), "--out", str(out), "--json", str(other)], f"--json {other} {NOT_A_REPORT}")
    assert other.read_bytes() == b"\x08\x09an onnx model" and not out.exists()


def test_a_users_own_link_to_a_runs_checkpoint_is_exported(run_dir, tmp_path):
    """`deploy/best -> ../run/checkpoints/last`, a user's link outside the run, was refused as leading out of its
    folder: only resuming a run confines its links to the run's checkpoints folder."""
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    (deploy / "best").symlink_to(os.path.relpath(run_dir / "checkpoints" / "last", deploy))
    result = runner.invoke(app, ["export", str(deploy / "best"), "--out", str(tmp_path / "p.onnx")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.onnx").is_file()


def test_an_opset_only_no_verify_allows_says_so(checkpoint, tmp_path):
    """--opset 27 (onnx knows it, onnxruntime does not run it) was refused without a word that
    --no-verify writes it, for a newer onnxruntime on the robot; beyond onnx's newest nothing helps."""
    import onnx

    from flowrl_deploy.export.graph import newest_opset

    newest, known, out = newest_opset(), onnx.defs.onnx_opset_version(), tmp_path / "p.onnx"
    if newest == known:
        pytest.skip("this onnxruntime runs every opset this onnx knows")
    hint = f"or --no-verify for up to {known}, when the robot's onnxruntime runs it"
    refused(["export", str(checkpoint), "--out", str(out), "--opset", str(known)], f"use 13..{newest}, {hint}")
    result = runner.invoke(app, ["export", str(checkpoint), "--out", str(out), "--opset", str(known + 1)])
    assert result.exit_code == 1 and "--no-verify" not in result.output
    with pytest.raises(FlowRLError, match=re.escape(f"or verify=False for up to {known}")):  # the API names its field
        export_checkpoint(checkpoint, out, ExportConfig(opset=known))


@pytest.mark.parametrize("command", ["export", "eval"])
def test_a_control_period_out_of_range_is_refused_naming_the_checkpoint(checkpoint, tmp_path, command):
    """`flowrl eval` ran such a checkpoint, and export refused it as a 'policy contract field' naming no file."""
    edited = edited_checkpoint(checkpoint, tmp_path / "period", control_period_s=-0.01)
    args = [command, str(edited), "--out", str(tmp_path / "p.onnx")] if command == "export" else [command, str(edited)]
    refused(args, f"{edited.resolve()}: control_period_s is -0.01 s; it must be 0 (none) or lie in [0.0001, 10] s")


@pytest.mark.parametrize("text", ["1_0", "٣", "1,٣", "+2", "0x10"])
def test_steps_take_plain_ascii_numbers_only(text):
    """Python's int() read '1_0' as 10 and the Arabic digit '٣' as 3."""
    from flowrl_deploy.cli.export import parse_steps

    with pytest.raises(FlowRLError, match="--steps takes a number or a comma list such as 1,2,5,10,20"):
        parse_steps(text)


@pytest.mark.parametrize("text", ["٣", "1_0", "４"])
def test_batch_takes_plain_ascii_numbers_only(text):
    from flowrl_deploy.cli.export import parse_batch

    with pytest.raises(FlowRLError, match="--batch takes 'dynamic' or an integer from 1 to 65536"):
        parse_batch(text)


@pytest.mark.parametrize("name", ["metrics.jsonl", "metrics.csv", "config.json"])
def test_an_empty_file_of_another_run_is_not_replaced(run_dir, checkpoint, tmp_path, name):
    """Another run's empty metrics.jsonl (a run shorter than --log-every) was replaced by a policy, so a
    later `flowrl train --resume` of that run would append its JSON lines to an ONNX file."""
    (run_dir / name).write_bytes(b"")
    message = f"out_path {run_dir / name} is {name} of the training run {run_dir}; write it elsewhere"
    with pytest.raises(FlowRLError, match=re.escape(message)):
        export_checkpoint(checkpoint, run_dir / name, ExportConfig(samples=3))
    assert (run_dir / name).read_bytes() == b""
    export_checkpoint(checkpoint, run_dir / "policy.onnx", ExportConfig(samples=3))  # beside it: fine


@pytest.mark.parametrize("where", ["checkpoints", "tensorboard"])
def test_an_earlier_export_inside_a_runs_folders_may_be_replaced(run_dir, checkpoint, where):
    """A folder holding config.json and checkpoints/ (a flowrl run, or a Hugging Face or Lightning project)
    took an export into its checkpoints/ or tensorboard/ once, then refused the same export again: a run
    never writes a policy, so an existing flowrl export is never one of its files."""
    out = run_dir / where / "policy.onnx"
    out.parent.mkdir(exist_ok=True)
    for _ in range(2):
        export_checkpoint(checkpoint, out, ExportConfig(samples=3))
    assert not unlike_a_flowrl_policy(out)
