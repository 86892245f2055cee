"""`flowrl inspect` of a policy file that records no export provenance (not written by `flowrl export`)."""

from __future__ import annotations

from tiny_policy import write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app


def test_a_policy_without_provenance_says_its_versions_are_not_recorded(tmp_path):
    """The exported line ended in a bare "with " when the file recorded no library versions."""
    result = CliRunner().invoke(app, ["inspect", str(write_policy(tmp_path / "policy.onnx"))])
    assert result.exit_code == 0, result.output
    (exported,) = [line for line in result.output.splitlines() if line.startswith("exported ")]
    assert exported == "exported     dtype ?, plain graph, library versions not recorded"
