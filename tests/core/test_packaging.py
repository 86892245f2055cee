"""The wheel installs one import namespace, and the robot-side install needs no torch."""

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from flowrl_deploy.extras import EXTRAS_OF

ROOT = Path(__file__).resolve().parents[2]


# The folders that install as the flowrl_deploy namespace, and where (pyproject.toml's package-dir).
PACKAGE_FOLDERS = {"flowrl_deploy": "flowrl_deploy", "train": "flowrl_deploy/train", "export": "flowrl_deploy/export"}
PACKAGE_FOLDERS["serve"] = "flowrl_deploy/serve"
VERSION_FILE = "flowrl_deploy/_version.py"  # written by setuptools-scm at build time, git-ignored


def tracked_files() -> list[str] | None:
    """The checkout's tracked files that are in its working tree (relative paths), or None outside a git checkout."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        return None
    run = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60)
    return [name for name in run.stdout.decode().split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel of a copy of the tree's tracked files: setuptools builds in ``build/`` beside the sources
    and keeps what it finds there, so a wheel built in the tree shipped files since deleted from it (and
    left ``build/`` behind in the checkout). Outside a git checkout, a copy without the build outputs.
    pip's cache is off: each run's copy is a new path, so each run added a wheel to ~/.cache/pip."""
    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("source") / "flowrl-deploy"
    tracked = tracked_files()
    if tracked is None:
        outputs = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "runs", "__pycache__")
        shutil.copytree(ROOT, source, ignore=outputs, symlinks=True)
    for name in tracked or ():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-q"]
    if importlib.util.find_spec("setuptools_scm") is not None:  # the build's requirements are here (the dev extra)
        command.append("--no-build-isolation")
    subprocess.run([*command, "-w", str(out), str(source)], check=True, capture_output=True)
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
    assert "flowrl = flowrl_deploy._main:main" in wheel.read(entry).decode()  # the program, its import guarded


def _distribution(requirement: str) -> str:
    """The normalized distribution name of a requirement ("dm_control>=1.0" -> "dm-control")."""
    return re.sub(r"[-_.]+", "-", re.split(r"[ ;<>=!~\[]", requirement)[0]).lower()


@pytest.mark.parametrize("extra", ["train", "export"])
def test_every_distribution_of_an_extra_has_a_module_that_names_its_install(wheel, extra):
    """A missing module that EXTRAS_OF does not name is a traceback, not the install hint (flowrl
    train without tensorboard fails in torch.utils.tensorboard): each distribution of the extra must
    provide a module EXTRAS_OF maps to it, and EXTRAS_OF maps to it no module that it does not install."""
    (meta,) = [n for n in wheel.namelist() if n.endswith("dist-info/METADATA")]
    lines = wheel.read(meta).decode().splitlines()
    requires = [line.removeprefix("Requires-Dist: ") for line in lines if line.startswith("Requires-Dist:")]
    distributions = {_distribution(r) for r in requires if f'extra == "{extra}"' in r}
    assert distributions
    modules_of = defaultdict(set)  # distribution -> its top-level modules, as installed here
    for module, installed_by in importlib.metadata.packages_distributions().items():
        for distribution in installed_by:
            modules_of[_distribution(distribution)].add(module)
    if not_installed := sorted(distributions - set(modules_of)):
        pytest.skip(f"{', '.join(not_installed)} not installed here, so their modules are unknown")
    mapped = {module for module, extras in EXTRAS_OF.items() if extra in extras}
    assert sorted(d for d in distributions if not modules_of[d] & mapped) == []
    assert mapped <= set().union(*(modules_of[d] for d in distributions))


def test_the_wheel_says_one_version_everywhere(wheel, tmp_path):
    """The version was written twice (pyproject.toml, flowrl_deploy.__version__) and could drift; now
    setuptools-scm writes it once, and the installed package reports the version pip installed."""
    (meta,) = [n for n in wheel.namelist() if n.endswith("dist-info/METADATA")]
    (version,) = [
        line.split(": ", 1)[1] for line in wheel.read(meta).decode().splitlines() if line.startswith("Version:")
    ]
    assert VERSION_FILE in wheel.namelist()
    wheel.extractall(tmp_path / "site")
    script = (
        "import flowrl_deploy, flowrl_deploy.versions as v\n"
        "print(flowrl_deploy.__file__, flowrl_deploy.__version__, v.release(), v.library_versions()['flowrl-deploy'])"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    where, *reported = run.stdout.split()
    assert where.startswith(str(tmp_path / "site"))
    assert reported == [version] * 3


def test_the_wheel_ships_only_files_of_the_tree(wheel):
    """Nothing left in a build folder from an earlier tree (a deleted module) reaches the wheel."""
    stages = {"train", "export", "serve"}
    for name in wheel.namelist():
        parts = Path(name).parts
        if parts[0] != "flowrl_deploy" or name == VERSION_FILE:
            continue
        source = ROOT.joinpath(*parts[1:]) if len(parts) > 2 and parts[1] in stages else ROOT.joinpath(*parts)
        assert source.is_file(), f"{name} has no source in the tree"


def test_the_wheel_holds_exactly_the_tracked_package_files(wheel):
    """pyproject.toml lists the packages by hand (setuptools' discovery cannot map the root folders
    train/, export/ and serve/ into flowrl_deploy): a new subpackage left off the list was missing from the
    wheel without an error, while the editable install, the tests and CI imported it from the tree."""
    tracked = tracked_files()
    if tracked is None:
        pytest.skip("not a git checkout: which files are tracked is unknown")
    expected = set()
    for name in tracked:
        top, _, rest = name.partition("/")
        if top in PACKAGE_FOLDERS and (name.endswith((".py", ".proto", ".pyi")) or name.endswith("/py.typed")):
            expected.add(f"{PACKAGE_FOLDERS[top]}/{rest}")
    shipped = {name for name in wheel.namelist() if name.startswith("flowrl_deploy/")} - {VERSION_FILE}
    assert sorted(expected - shipped) == [], "not in the wheel: add its package to pyproject.toml's packages"
    assert sorted(shipped - expected) == [], "in the wheel but not a tracked package file"


def declared(group: str) -> list[str]:
    """pyproject.toml's requirements: the base ``dependencies`` or an extra's."""
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib
    except ImportError:  # Python 3.10 has no tomllib: read the list's quoted items (one a line there)
        block = re.search(rf"^{re.escape(group)} = \[\n(.*?)^\]", text, re.M | re.S)
        assert block, f"pyproject.toml has no {group} list"
        return re.findall(r'^\s*"([^"]+)",', block.group(1), re.M)
    project = tomllib.loads(text)["project"]
    return project["dependencies"] if group == "dependencies" else project["optional-dependencies"][group]


def lower_bound(group: str, name: str) -> Version:
    (requirement,) = [Requirement(r) for r in declared(group) if _distribution(r) == name]
    (bound,) = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==")]
    return bound


def test_the_fallback_reading_of_pyproject_agrees_with_tomllib(monkeypatch):
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    groups = ("dependencies", "dev", "train")
    expected = [declared(group) for group in groups]
    monkeypatch.setitem(sys.modules, "tomllib", None)  # import tomllib fails, as on Python 3.10
    assert [declared(group) for group in groups] == expected


@pytest.mark.slow
def test_the_cli_runs_with_typer_at_its_lower_bound_and_the_newest_of_its_dependencies(tmp_path):
    """The bound is 0.29, whose help the layout tests check. Before: typer 0.12.0-0.12.3 cannot read `str | None`
    options, 0.12.4-0.15.3 crash on every command with
    click 8.2 or newer (`make_metavar() takes 1 positional argument but 2 were given`), which pip keeps
    or picks since they do not cap it, and 0.16.0-0.17.4 run a command without its required argument
    under click 8.3 or newer (`flowrl inspect` with no MODEL, then required, ended in a TypeError; `flowrl
    export` with no CHECKPOINT is that usage error now that inspect can take --server instead). Downloads typer at
    pyproject's lower bound and the newest of its dependencies (skipped offline), and runs the CLI with
    them: the number alone was checked before."""
    bound = lower_bound("dependencies", "typer")
    assert bound >= Version("0.29")  # the help layout tests/cli/test_help_layout.py checks
    target = tmp_path / "typer"
    command = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile"]
    fetched = subprocess.run(
        [*command, "--no-cache-dir", "--target", str(target), f"typer=={bound}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if fetched.returncode != 0:
        # offline (only local wheels, if any, are listed) is a skip; an index that lists typer's older
        # releases but not the bound means the bound is wrong: a failure, not a skip
        listed = re.search(r"\(from versions: ([^)]*)\)", fetched.stderr)
        versions = listed.group(1).split(", ") if listed else []
        older = [v for v in versions if v not in ("", "none") and Version(v) < bound]
        assert not older, f"pyproject's typer>={bound} is no release pip can install: {fetched.stderr[-300:]}"
        pytest.skip(f"cannot download typer=={bound} (offline?): {fetched.stderr.strip()[-300:]}")
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "flowrl_deploy.cli"]
    found = subprocess.run(
        [sys.executable, "-c", "import importlib.metadata as m, typer; print(typer.__file__, m.version('typer'))"],
        env=env,
        capture_output=True,
        text=True,
    )
    where, version = found.stdout.split()
    assert where == str(target / "typer" / "__init__.py") and Version(version) == bound, found.stderr
    missing = str(tmp_path / "missing.onnx")
    # help, a command refusing its argument, and a usage error (click's metavar rendering, which crashed)
    for args, status in ((["--help"], 0), (["serve", "--help"], 0), (["inspect", missing], 1), (["export"], 2)):
        run = subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == status and "Traceback" not in run.stderr, (args, run.stderr[-2000:])


PROTO = ROOT / "flowrl_deploy" / "proto" / "flowrl" / "v1"


def generated_versions() -> tuple[Version, Version]:
    """The grpcio and protobuf versions the committed generated modules require at import."""
    grpc_module = (PROTO / "policy_pb2_grpc.py").read_text()
    grpc = re.search(r"^GRPC_GENERATED_VERSION = '([^']+)'$", grpc_module, re.M)
    check = r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),"
    protobuf = re.search(check, (PROTO / "policy_pb2.py").read_text())
    assert grpc and protobuf, "the generated modules no longer check the versions they need"
    return Version(grpc.group(1)), Version(".".join(protobuf.groups()))


def test_the_declared_grpcio_and_protobuf_can_import_the_generated_code():
    """policy_pb2_grpc.py refuses at import a grpcio older than the grpcio-tools that wrote it, and
    policy_pb2.py a protobuf older than its gencode: regenerating with a newer grpcio-tools without
    raising these lower bounds broke every robot whose grpcio pyproject.toml still allowed."""
    grpc, protobuf = generated_versions()
    for name in ("grpcio", "grpcio-health-checking", "grpcio-reflection"):
        assert lower_bound("dependencies", name) >= grpc, f"{name}'s lower bound is below the generated code's"
    assert lower_bound("dependencies", "protobuf") >= protobuf
    (requirement,) = [Requirement(r) for r in declared("dependencies") if _distribution(r) == "protobuf"]
    assert requirement.specifier.contains(protobuf), "protobuf's upper bound leaves out the generated code's"


def test_the_proto_generators_are_pinned_to_the_versions_that_wrote_the_committed_code():
    """The staleness test compares the committed modules with freshly generated ones: an unpinned
    grpcio-tools writes its own version into GRPC_GENERATED_VERSION, so a new release failed it on a
    fresh install, and regenerating raised the grpcio the robots need. Regenerating is a deliberate
    change: raise the pins, regenerate, and raise the lower bounds above."""
    grpc, _ = generated_versions()
    dev = {_distribution(r): Requirement(r) for r in declared("dev")}
    assert str(dev["grpcio-tools"].specifier) == f"=={grpc}"
    assert str(dev["mypy-protobuf"].specifier).startswith("==")


def test_the_wheel_carries_the_license_text(wheel):
    """The metadata said Apache-2.0, but the repository and its wheel held no license text, which the
    license asks to be given to every recipient (section 4(a))."""
    (meta,) = [n for n in wheel.namelist() if n.endswith("dist-info/METADATA")]
    lines = wheel.read(meta).decode().splitlines()
    assert "License-Expression: Apache-2.0" in lines and "License-File: LICENSE" in lines
    (license_file,) = [n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
    text = wheel.read(license_file).decode()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert text == (ROOT / "LICENSE").read_text()
    assert any(line.startswith("Classifier: Programming Language :: Python :: 3.10") for line in lines)


@pytest.mark.parametrize("block", ["cpu-command", "cross-bundle-command"])
def test_the_install_pages_hand_lists_follow_the_base_dependencies(block):
    """docs/install.md's CPU-only and cross-platform bundle commands list the base dependencies by hand,
    with the CPU `onnxruntime` (pip evaluates the onnxruntime-gpu marker for the machine it runs on):
    the list must follow pyproject.toml."""
    page = (ROOT / "docs" / "install.md").read_text()
    found = re.search(rf"<!-- {block} -->\n```bash\n(.*?)\n```\n<!-- /{block} -->", page, re.S)
    assert found, f"docs/install.md's {block} is gone"
    quoted = re.findall(r'"([^"]+)"', found.group(1).split(" && ")[-1])  # the requirements, not the options
    listed = [(r.name, r.specifier) for r in map(Requirement, quoted)]
    base = [(r.name, r.specifier) for r in map(Requirement, declared("dependencies"))]
    assert listed == [r for r in base if r[0] != "onnxruntime-gpu"]  # onnxruntime last, without its marker


def test_install_md_writes_out_the_export_extras_own_requirements_as_pyproject_declares_them():
    """docs/install.md's CPU-only and Jetson installs add an extra by its requirements, written out there
    for `export` (flowrl-deploy[export] would put the other onnxruntime over theirs): raising the torch cap
    in pyproject.toml must not leave that command behind."""
    text = (ROOT / "docs" / "install.md").read_text(encoding="utf-8")
    found = re.search(r'for `export`, `pip install ((?:"[^"]+" ?)+)`', text)
    assert found, "docs/install.md no longer writes out the export extra's requirements"
    documented = {str(Requirement(r)) for r in re.findall(r'"([^"]+)"', found.group(1))}
    line = re.search(r"^export = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)
    assert line, "pyproject.toml's export extra is no longer one line"
    assert documented == {str(Requirement(r)) for r in re.findall(r'"([^"]+)"', line.group(1))}
