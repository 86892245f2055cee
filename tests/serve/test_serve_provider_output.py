"""--providers: its help offered 'cuda,cpu', which a machine without CUDA refuses (each named provider
must start), and onnxruntime printed its "EP Error" block on stdout as a session was made, among the
`serving … on` line scripts read there. What onnxruntime prints while a session is made is kept off
stdout, and its reason ends the one-line refusal."""

from __future__ import annotations

import subprocess
import sys
import threading

import onnxruntime
import pytest
from tiny_policy import write_policy
from typer.testing import CliRunner

from flowrl_deploy import ort
from flowrl_deploy.cli import app
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.policy import OnnxPolicy


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return write_policy(tmp_path_factory.mktemp("providers") / "policy.onnx")


def test_the_help_offers_no_provider_list_that_is_refused_without_a_gpu():
    result = CliRunner().invoke(app, ["serve", "--help"], terminal_width=400)
    help_text = " ".join(result.output.split())
    assert "'cuda,cpu'" not in help_text and "each must start" in help_text, help_text


def _tensorrt_starts(policy) -> bool:
    try:
        ort.make_session(policy.read_bytes(), providers=["TensorrtExecutionProvider"])
    except FlowRLError:
        return False
    return True


@pytest.fixture
def no_tensorrt(policy, capfd):
    if "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has no TensorRT provider")
    if _tensorrt_starts(policy):
        pytest.skip("TensorRT starts here")
    capfd.readouterr()


def test_a_provider_that_cannot_start_prints_nothing_on_stdout(policy, no_tensorrt, capfd):
    with pytest.raises(FlowRLError) as refused:
        OnnxPolicy(policy, providers=["TensorrtExecutionProvider"])
    out, _ = capfd.readouterr()
    assert out == ""
    message = str(refused.value)
    assert message.startswith("onnxruntime could not start TensorrtExecutionProvider here (onnxruntime: ")
    assert "\n" not in message and "onnxruntime_src" not in message and "EP Error" not in message, message


def test_serve_with_a_provider_that_cannot_start_writes_nothing_on_stdout(policy, no_tensorrt):
    result = subprocess.run(
        [sys.executable, "-m", "flowrl_deploy.cli", "serve", str(policy), "--port", "0", "--providers", "tensorrt"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1 and result.stdout == "", result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "could not start TensorrtExecutionProvider" in errors[0], result.stderr


def test_what_other_threads_print_while_a_session_is_made_still_reaches_stdout(policy, monkeypatch, capsys):
    """Only the thread making the session has its prints kept: a program embedding the server prints on."""
    building, printed = threading.Event(), threading.Event()
    onnxruntime_module = ort.import_onnxruntime()
    real = onnxruntime_module.InferenceSession

    def chatty(*args, **kwargs):
        print("*************** EP Error ***************")
        building.set()
        assert printed.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(onnxruntime_module, "InferenceSession", chatty)

    def other() -> None:
        assert building.wait(30)
        print("the embedding program's own line")
        printed.set()

    thread = threading.Thread(target=other)
    thread.start()
    OnnxPolicy(policy)
    thread.join(30)
    assert capsys.readouterr().out == "the embedding program's own line\n"
