"""Provenance: which libraries' versions a checkpoint or an export records."""

from importlib import metadata

from flowrl_deploy import versions


def test_the_env_libraries_are_recorded_when_installed_and_left_out_when_not(monkeypatch):
    """A HumanoidBench run recorded neither gymnasium's nor HumanoidBench's version."""

    def version(name: str) -> str:
        if name == "onnxruntime-gpu":
            raise metadata.PackageNotFoundError(name)
        return f"{name}-1.0"

    monkeypatch.setattr(versions.metadata, "version", version)
    found = versions.library_versions()
    assert found["gymnasium"] == "gymnasium-1.0" and found["humanoid_bench"] == "humanoid_bench-1.0"
    assert "onnxruntime-gpu" not in found


def test_the_versions_recorded_are_the_installed_ones():
    found = versions.library_versions()
    for name in ("gymnasium", "humanoid_bench", "mujoco"):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            assert name not in found
        else:
            assert found[name] == installed
