"""ServerProcess: the banner `flowrl serve` prints is read back by the one parser beside its format,
and a child whose start goes wrong is never left running."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve import process
from flowrl_deploy.serve.server import parse_banner


@pytest.mark.parametrize(
    ("line", "version", "address"),
    [
        ("serving v1-ab12 (N=4 flow steps) on 127.0.0.1:5005\n", "v1-ab12", "127.0.0.1:5005"),
        ("serving v2-cd34 (N=1 flow steps) on 0.0.0.0:5005, metrics on 0.0.0.0:9100", "v2-cd34", "127.0.0.1:5005"),
        ("serving v1-ab12 (N=10 flow steps) on [::]:5005, metrics on [::]:9100", "v1-ab12", "[::1]:5005"),
    ],
)
def test_parse_banner_reads_the_version_and_the_address_to_connect_to(line, version, address):
    assert parse_banner(line) == (version, address)


@pytest.fixture
def children(monkeypatch):
    """Make ServerProcess start a stand-in child that prints a malformed banner; the children started."""
    started: list[subprocess.Popen] = []
    popen = subprocess.Popen

    def record(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    script = "import time; print('serving v1-ab12 on nowhere', flush=True); time.sleep(60)"
    monkeypatch.setattr(process, "FLOWRL", (sys.executable, "-c", script))
    monkeypatch.setattr(process.subprocess, "Popen", record)
    yield started
    for child in started:  # only where the code under test left one running
        child.kill()
        child.wait()


def test_a_child_that_prints_a_malformed_banner_is_stopped(children, tmp_path):
    with pytest.raises(FlowRLError, match="did not start: serving v1-ab12 on nowhere"):
        process.ServerProcess(tmp_path / "policy.onnx")
    assert children[0].poll() is not None


def test_a_child_is_stopped_when_the_wait_for_its_banner_is_interrupted(children, tmp_path, monkeypatch):
    def interrupted(self, timeout_s):
        raise KeyboardInterrupt

    monkeypatch.setattr(process.ServerProcess, "_first_line", interrupted)
    with pytest.raises(KeyboardInterrupt):
        process.ServerProcess(tmp_path / "policy.onnx")
    assert children[0].poll() is not None


@pytest.mark.parametrize(
    "stderr",
    [
        "loading\nerror: model not found: /x/policy.onnx\n",
        '{"level": "INFO", "message": "loading"}\n{"level": "ERROR", "message": "model not found: /x/policy.onnx"}\n',
        "<6>INFO flowrl.serve: loading\n<3>error: model not found: /x/policy.onnx\n",
        '<6>{"level": "INFO", "message": "x"}\n<3>{"level": "ERROR", "message": "model not found: /x/policy.onnx"}\n',
    ],
    ids=["text", "json", "journal-text", "journal-json"],
)
def test_a_refusal_is_read_back_in_every_log_format(stderr, tmp_path, monkeypatch):
    """With --log-format json the refusal is a JSON object, and under journald a line begins with its
    level (<3>): ServerProcess read only ``error: …`` lines and said 'did not start: no output'."""
    script = f"import sys; sys.stderr.write({stderr!r}); sys.exit(1)"
    monkeypatch.setattr(process, "FLOWRL", (sys.executable, "-c", script))
    with pytest.raises(FlowRLError, match=r"^flowrl serve policy.onnx did not start: model not found: /x/policy.onnx$"):
        process.ServerProcess(tmp_path / "policy.onnx")


def test_a_missing_model_served_with_json_logs_says_so(tmp_path):
    with pytest.raises(FlowRLError, match=r"did not start: model not found: .*missing\.onnx$"):
        process.ServerProcess(tmp_path / "missing.onnx", "--log-format", "json")
