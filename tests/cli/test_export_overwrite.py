"""`flowrl export -o FILE` replaces FILE only when it is a policy flowrl exported (an ONNX model
carrying a flowrl contract), an empty file or a link: `-o ok.json` silently turned an observation file
(or notes, an .npy, another project's ONNX model) into a policy. Anything else is refused before any
work, naming the file; a sweep's files are checked alike."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_policy import write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app

pytest.importorskip("torch")
pytest.importorskip("onnx")

runner = CliRunner()
RULE = "an export may replace an earlier export, never another file"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from export_fixtures import saved_checkpoint  # torch: after the skips

    return saved_checkpoint(tmp_path_factory.mktemp("ck"))


def foreign_onnx(path: Path) -> Path:
    """Another project's ONNX model: valid, without a flowrl contract."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def no_work(*args, **kwargs):
    raise AssertionError("the export began though its output is refused")


@pytest.mark.parametrize(
    ("name", "content", "what"),
    [
        ("ok.json", b"[0, 0, 0, 0, 0]\n", "is not an ONNX file"),
        ("notes.txt", b"my notes\n", "is not an ONNX file"),
        ("obs.npy", b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'}", "is not an ONNX file"),
        ("p.onnx", b"\x08\x07", "is not an ONNX file"),  # a truncated model
    ],
)
def test_an_existing_file_that_is_not_a_flowrl_policy_is_refused(
    checkpoint, tmp_path, monkeypatch, name, content, what
):
    monkeypatch.setattr("flowrl_deploy.export.export_checkpoint", no_work)
    target = tmp_path / name
    target.write_bytes(content)
    result = runner.invoke(app, ["export", str(checkpoint), "-o", str(target)])
    assert result.exit_code == 1, result.output
    assert f"error: --out {target} exists and {what}: {RULE}" in result.output, result.output
    assert "Traceback" not in result.output and target.read_bytes() == content


def test_another_projects_onnx_model_is_refused(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr("flowrl_deploy.export.export_checkpoint", no_work)
    target = foreign_onnx(tmp_path / "other.onnx")
    before = target.read_bytes()
    result = runner.invoke(app, ["export", str(checkpoint), "-o", str(target)])
    assert result.exit_code == 1, result.output
    assert f"--out {target} exists and is an ONNX model without a flowrl contract: {RULE}" in result.output
    assert target.read_bytes() == before


def test_a_sweeps_file_is_checked_alike(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr("flowrl_deploy.export.sweep.sweep_steps", no_work)
    (tmp_path / "c.n2.onnx").write_text("notes\n")
    result = runner.invoke(app, ["export", str(checkpoint), "-o", str(tmp_path / "c.onnx"), "--steps", "1,2"])
    assert result.exit_code == 1, result.output
    assert (
        f"the sweep's file (from --out {tmp_path / 'c.onnx'}) {tmp_path / 'c.n2.onnx'} exists and is not an ONNX"
        in (result.output)
    )


@pytest.mark.parametrize("kind", ["earlier-export", "tiny-flowrl-policy", "empty", "link"])
def test_an_earlier_export_an_empty_file_or_a_link_is_replaced(checkpoint, tmp_path, kind):
    target = tmp_path / "p.onnx"
    kept = tmp_path / "notes.txt"
    kept.write_text("my notes\n")
    if kind == "earlier-export":
        assert runner.invoke(app, ["export", str(checkpoint), "-o", str(target), "--no-verify"]).exit_code == 0
    elif kind == "tiny-flowrl-policy":
        write_policy(target)
    elif kind == "empty":
        target.write_bytes(b"")
    else:
        target.symlink_to(kept)  # the link is replaced, never written through
    result = runner.invoke(app, ["export", str(checkpoint), "-o", str(target), "--no-verify"])
    assert result.exit_code == 0, result.output
    assert not target.is_symlink() and target.stat().st_size > 0
    assert kept.read_text() == "my notes\n"


def test_the_check_reads_a_large_file_in_pieces(tmp_path):
    """A multi-gigabyte file given by mistake is told apart by its first bytes, not loaded whole."""
    from flowrl_deploy.onnxfile import unlike_a_flowrl_policy

    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.write(b"\x08\x08\x3a\xff\xff\xff\x7f")  # ir_version 8, then a 'graph' of 256 MiB
        f.truncate(1 << 28)
    assert unlike_a_flowrl_policy(big) == "is not an ONNX file"
    assert unlike_a_flowrl_policy(write_policy(tmp_path / "p.onnx")) == ""
    assert unlike_a_flowrl_policy(foreign_onnx(tmp_path / "o.onnx")) == "is an ONNX model without a flowrl contract"
