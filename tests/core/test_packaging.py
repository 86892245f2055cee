"""The wheel installs one import namespace, and the robot-side install needs no torch."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("flowrl_deploy-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_installs_only_the_flowrl_deploy_namespace(wheel):
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"flowrl_deploy"}


def test_stage_folders_map_into_the_namespace(wheel):
    names = set(wheel.namelist())
    for module in ("train/actor.py", "train/ode.py", "export/__init__.py", "serve/__init__.py"):
        assert f"flowrl_deploy/{module}" in names
    assert "flowrl_deploy/proto/flowrl/v1/policy.proto" in names


def test_console_script_and_extras(wheel):
    (meta,) = [n for n in wheel.namelist() if n.endswith("dist-info/METADATA")]
    metadata = wheel.read(meta).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    base = {re.split(r"[ ;<>=!~\[]", r.removeprefix("Requires-Dist: "))[0] for r in requires if "extra ==" not in r}
    assert {"grpcio", "numpy", "safetensors"} <= base
    assert not base & {"torch", "dm_control", "mujoco", "onnx", "gymnasium"}
    assert any("torch" in r and 'extra == "train"' in r for r in requires)
    (entry,) = [n for n in wheel.namelist() if n.endswith("entry_points.txt")]
    assert "flowrl = flowrl_deploy.cli:app" in wheel.read(entry).decode()
