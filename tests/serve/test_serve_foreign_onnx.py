"""An ONNX file onnxruntime cannot load (another project's model, one for a newer runtime, a cut-off
copy) is one line saying what is wrong, in `flowrl serve`, `Reload` and a local fallback model alike,
with the words `flowrl inspect` uses for the same file: they showed onnxruntime's C++ text (its
source file, a function signature, a trailing newline). onnxruntime's own text is logged at DEBUG."""

from __future__ import annotations

import logging
import re

import onnx
import onnxruntime
import pytest
from onnx import helper
from tiny_policy import write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.client import PolicyClient, ServiceError
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.policy import OnnxPolicy
from flowrl_deploy.serve import PolicyServer, ServeConfig

ORT = re.escape(onnxruntime.__version__)


def _edited(source, path, edit):
    model = onnx.load(source)
    edit(model)
    onnx.save(model, path)
    return path


def _newer_ir(model):
    model.ir_version = 99


def _bare_newer_ir(model):
    model.ir_version = 99
    del model.metadata_props[:]  # another project's model: no flowrl contract


def _custom_op(model):
    model.graph.node[0].domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))


def _future_opset(model):
    model.opset_import[0].version = 99


def _cut(source, path):
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


CASES = {
    "newer-ir": (
        lambda s, p: _edited(s, p, _newer_ir),
        rf"cannot load ONNX model {{path}}: its IR version 99 is newer than this onnxruntime \({ORT}\) reads "
        r"\(at most \d+\); upgrade onnxruntime, or save the model at a lower IR version \(`flowrl export` writes "
        r"the lowest its opsets allow\)",
    ),
    "no-contract": (
        lambda s, p: _edited(s, p, _bare_newer_ir),
        r"{path}: the model carries no flowrl policy contract: was it exported by `flowrl export`\?",
    ),
    "cut-off": (_cut, r"cannot load ONNX model {path}: not an ONNX file \(.+\)"),
    "custom-op": (
        lambda s, p: _edited(s, p, _custom_op),
        rf"cannot load ONNX model {{path}}: onnxruntime {ORT} cannot run it: com\.example:MatMul\(-1\) is not a "
        r"registered function/op",
    ),
    "future-opset": (
        lambda s, p: _edited(s, p, _future_opset),
        rf"cannot load ONNX model {{path}}: its ai\.onnx opset 99 is newer than this onnxruntime \({ORT}\) "
        r"supports \(up to \d+\); upgrade onnxruntime, or export at a lower opset",
    ),
}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_policy(tmp_path_factory.mktemp("foreign") / "policy.onnx")


@pytest.fixture(params=CASES, ids=CASES)
def foreign(request, good, tmp_path):
    make, message = CASES[request.param]
    path = make(good, tmp_path / "other.onnx")
    return path, message.replace("{path}", str(path).replace(".", r"\."))


def _one_clean_line(text: str, pattern: str) -> None:
    assert re.fullmatch(pattern, text), text
    for noise in ("ONNXRuntimeError", "onnxruntime_src", "onnxruntime::", "\n"):
        assert noise not in text, text


def test_a_local_model_says_what_is_wrong(foreign, caplog):
    path, message = foreign
    with caplog.at_level(logging.DEBUG, logger="flowrl"), pytest.raises(FlowRLError) as refused:
        OnnxPolicy(path)
    _one_clean_line(str(refused.value), message)
    if "cannot load" in str(refused.value) and "not an ONNX file" not in str(refused.value):
        assert any("[ONNXRuntimeError]" in r.getMessage() for r in caplog.records)  # the detail, at DEBUG


def test_serve_says_what_is_wrong_in_one_line(foreign):
    path, message = foreign
    with pytest.raises(FlowRLError) as refused:
        PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start()
    _one_clean_line(str(refused.value), message)
    result = CliRunner().invoke(app, ["serve", str(path), "--port", "0"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    (error,) = [line for line in result.output.splitlines() if line.startswith("error: ")]
    _one_clean_line(error.removeprefix("error: "), message)


def test_reload_says_what_is_wrong_in_one_line(foreign, good, tmp_path):
    path, message = foreign
    served = tmp_path / "served.onnx"
    served.write_bytes(good.read_bytes())
    server = PolicyServer(ServeConfig(str(served), port=0, grace_s=0)).start()
    with server, PolicyClient(server.address) as client, pytest.raises(ServiceError) as refused:
        client.reload(str(path))
    details = refused.value.details
    prefix = f"reload refused, still serving {server.servicer.model.version}: "
    assert details.startswith(prefix), details
    _one_clean_line(details.removeprefix(prefix), message)
