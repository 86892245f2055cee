"""A file given where an ONNX policy is expected that is none (a run's config.json or metrics.csv, a
cut-off copy) is refused saying what the file holds and what to give, never naming the internal protobuf
type the file was parsed as ('flowrl_inspect.ModelProto': Wire format was corrupt)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.policy import OnnxPolicy

runner = CliRunner()


def _refusal(path) -> str:
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    with pytest.raises(FlowRLError) as refused:  # serve, eval, a local fallback and Reload load it so
        OnnxPolicy(path)
    assert result.output.strip() == f"error: {refused.value}"
    assert "flowrl_inspect" not in result.output and "ModelProto" not in result.output
    return str(refused.value)


@pytest.mark.parametrize(
    ("name", "data", "holds"),
    [
        ("config.json", b'{"env": "dmc:cartpole-balance"}\n', "JSON text"),
        ("metrics.csv", b"step,return\n1,2\n", "text"),
    ],
)
def test_a_runs_own_file_names_what_it_holds_and_the_export_that_makes_a_policy(tmp_path, name, data, holds):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / name).write_bytes(data)
    message = _refusal(run / name)
    assert f"not an ONNX file (it holds {holds}): that is a training run's file: `flowrl export {run}`" in message
    checkpoint = run / "checkpoints" / "step_000000400"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"")
    (checkpoint / "checkpoint.json").write_bytes(b"{}")
    message = _refusal(checkpoint / "checkpoint.json")
    assert f"(it holds JSON text): that is a checkpoint's file: `flowrl export {checkpoint}`" in message, message


def test_another_text_file_says_it_holds_text_and_what_to_give(tmp_path):
    path = tmp_path / "config.json"  # a run's file name, but no run's folder
    path.write_text("\ufeff[0.1, 0.2]\n")
    message = _refusal(path)
    assert message.endswith("not an ONNX file (it holds JSON text): give the .onnx policy that `flowrl export` writes")
    path = tmp_path / "obs.txt"
    path.write_text("0.1 0.2 0.3\n")
    assert "not an ONNX file (it holds text): give the .onnx policy" in _refusal(path)


def test_an_empty_file_is_called_empty(tmp_path):
    path = tmp_path / "policy.onnx"
    path.write_bytes(b"")
    assert "not an ONNX file (it is empty)" in _refusal(path)


def test_bytes_that_do_not_parse_say_so_without_the_protobuf_detail(tmp_path):
    path = tmp_path / "policy.onnx"
    path.write_bytes(b"\x00\xffnot a model")
    message = _refusal(path)
    assert message.startswith(f"cannot load ONNX model {path}: not an ONNX file ("), message
    assert "Wire format" not in message, message
