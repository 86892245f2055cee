"""Hand-edited policy files: a contract that its graph does not keep, or an odd provenance record,
gives one clear line from every command that reads the file, never a traceback at warm-up."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace

import onnx
import pytest
from serve_stderr import refusal as refusal_of
from tiny_policy import tiny_contract, write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.contract import PROVENANCE_KEY, contract_to_metadata
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.policy import OnnxPolicy

runner = CliRunner()


def rewrite_metadata(path, entries: dict[str, str]) -> None:
    model = onnx.load(str(path))
    kept = {p.key: p.value for p in model.metadata_props}
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {**kept, **entries})
    onnx.save(model, str(path))


def test_a_contract_that_its_graph_does_not_keep_is_refused(tmp_path):
    path = write_policy(tmp_path / "policy.onnx")
    wrong = replace(tiny_contract(), obs_dim=9, obs_layout=(("position", 8), ("velocity", 1)))  # the graph has 3
    rewrite_metadata(path, contract_to_metadata(wrong, {}))  # with a hash recomputed over the edit
    with pytest.raises(FlowRLError, match="obs tensor has 3 columns, but its contract says 9"):
        OnnxPolicy(path)
    for command in (["serve", str(path), "--port", "0"], ["inspect", str(path)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert "obs tensor has 3 columns, but its contract says 9" in result.output


def test_inspect_shows_an_odd_provenance_record_as_it_is(tmp_path):
    path = write_policy(tmp_path / "policy.onnx")
    rewrite_metadata(path, {PROVENANCE_KEY: json.dumps({"export_config": [1, 2], "verification": {"passed": 1}})})
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert 'verified     {"passed": 1}' in result.output


def test_serving_a_file_that_is_not_onnx_names_the_file(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x00not a model")
    result = runner.invoke(app, ["serve", str(path), "--port", "0"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"cannot load ONNX model {path}" in result.output


def test_a_provenance_record_that_is_not_json_is_called_so(tmp_path):
    path = write_policy(tmp_path / "policy.onnx")
    rewrite_metadata(path, {PROVENANCE_KEY: "{oops"})
    with pytest.raises(FlowRLError, match="provenance record is not valid JSON"):
        OnnxPolicy(path)


@pytest.mark.parametrize("name", ["policy.ONNX", "policy.bin"])
def test_a_graph_is_served_whatever_its_suffix(tmp_path, name):
    """Serve tells a graph from a checkpoint as eval does: by kind, not by the .onnx suffix (it
    used to try exporting policy.ONNX as a checkpoint)."""
    from flowrl_deploy.client import PolicyClient
    from flowrl_deploy.serve import PolicyServer, ServeConfig

    path = write_policy(tmp_path / name)
    with PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as server, PolicyClient(server.address) as c:
        assert c.spec().obs_dim == tiny_contract().obs_dim


@pytest.mark.parametrize(
    ("bounds", "shown"),
    [
        ({"action_low": (-1.0, -1.0), "action_high": (1.0, 1.0)}, "bounds       [-1, 1] for every action;"),
        ({"action_low": (-1.0, -2.0), "action_high": (1.0, 2.0)}, "bounds       [-1, 1], [-2, 2];"),
    ],
)
def test_inspect_shows_shared_action_bounds_once(tmp_path, bounds, shown):
    path = write_policy(tmp_path / "policy.onnx", **bounds)
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert shown in result.output


def test_serving_a_pipe_is_refused_at_once_not_read(tmp_path):
    """Reading a FIFO named like a policy blocked forever, deaf to SIGTERM (the bound here)."""
    fifo = tmp_path / "policy.onnx"
    os.mkfifo(fifo)
    result = subprocess.run(
        [sys.executable, "-m", "flowrl_deploy.cli", "serve", str(fifo), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    refusal = f"error: {fifo} is not a regular file (a device, pipe or socket), so not an ONNX model"
    assert refusal_of(result.stderr).strip() == refusal  # after the "loading …" line


@pytest.mark.parametrize("name", ["checkpoint.json", "model.safetensors"])
def test_serving_a_checkpoint_holding_a_pipe_is_refused_not_read(tmp_path, name):
    """The checkpoint readers take only regular files, so the exporter of `flowrl serve RUN` never
    opens a FIFO in the checkpoint (reading one blocks, deaf to SIGTERM: the bound here)."""
    from fake_checkpoints import save_step

    checkpoint = save_step(tmp_path / "run", 1)
    (checkpoint / name).unlink()
    os.mkfifo(checkpoint / name)
    result = subprocess.run(
        [sys.executable, "-m", "flowrl_deploy.cli", "serve", str(tmp_path / "run"), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    refused = refusal_of(result.stderr)  # after the "loading …" line
    assert refused.startswith("error: ") and refused.count("\n") == 1
    assert f"{checkpoint / name} is not a regular file (a directory, device, pipe or socket)" in result.stderr


def test_the_load_line_names_an_int8_export_and_warns_of_an_unverified_one(tmp_path, caplog):
    """The server's log said nothing of a file exported with --dtype int8 (its actions are not its fp32
    twin's) or with --no-verify (never checked against the torch sampler)."""
    import logging

    from flowrl_deploy.serve import PolicyServer, ServeConfig

    path = write_policy(tmp_path / "policy.onnx")
    rewrite_metadata(path, {PROVENANCE_KEY: json.dumps({"dtype": "int8", "export_config": {"verify": False}})})
    with caplog.at_level(logging.INFO, logger="flowrl.serve"):
        PolicyServer(ServeConfig(str(path), port=0, grace_s=0, providers=("CPUExecutionProvider",))).start().stop()
    said = [record.getMessage() for record in caplog.records if record.name == "flowrl.serve"]
    (loaded,) = [line for line in said if line.startswith("loaded ")]
    assert re.search(r"\(N=1 flow steps, int8, CPUExecutionProvider; a batch-1 call in \d+ µs at warm-up\)$", loaded)
    (warning,) = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "--no-verify" in r.getMessage()
    ]
    assert warning == f"{path} was exported with --no-verify: its actions were never checked against the torch sampler"
