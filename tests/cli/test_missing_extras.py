"""A robot computer's base install (no torch, onnx or dm_control): a command that needs an extra
says in one line which module is missing and what to install, exit status 1, never a traceback; the
Python API's ModuleNotFoundError says the same.
The absence is simulated by ``sys.modules[name] = None`` in a child process running the CLI; a test
whose message depends on the other extras being there skips where they are not."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from extras_needed import needs_extras
from fake_checkpoints import save_step
from serve_stderr import refusal
from tiny_policy import write_policy

from flowrl_deploy import extras
from flowrl_deploy.cli._common import user_errors
from flowrl_deploy.extras import install_command, missing_extra_message, naming_the_extra
from flowrl_deploy.serve import PolicyServer, ServeConfig

WITHOUT = textwrap.dedent(
    """
    import sys

    for name in sys.argv[1].split(","):
        sys.modules[name] = None  # import name -> ModuleNotFoundError, as if it were not installed
    from flowrl_deploy.cli import app

    app(sys.argv[2:], prog_name="flowrl")
    """
)


def run_without(modules: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``flowrl *args`` in a child process where ``modules`` (comma-separated) cannot be imported."""
    return subprocess.run(
        [sys.executable, "-c", WITHOUT, modules, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert refusal(result.stderr).strip() == f"error: {message}"  # `flowrl serve` logs "loading …" first


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    save_step(run, 1)
    return run


def test_control_without_dm_control_names_the_train_extra(tmp_path):
    policy = write_policy(
        tmp_path / "cartpole.onnx", obs_dim=5, act_dim=1, action_low=(-1.0,), action_high=(1.0,), obs_layout=(),
        action_names=(), env_id="dmc:cartpole-swingup",
    )  # fmt: skip
    with PolicyServer(ServeConfig(str(policy), port=0, grace_s=0)).start() as server:
        result = run_without("dm_control", "control", "--server", server.address, "--max-steps", "10")
    assert_one_line_error(
        result,
        f"dm_control is not installed, so dmc:cartpole-swingup cannot be made: {install_command('train')}",
    )


@needs_extras("export")
def test_serve_of_a_checkpoint_without_onnx_names_the_export_extra(checkpoint_run):
    result = run_without("onnx", "serve", str(checkpoint_run), "--port", "0")
    assert_one_line_error(
        result,
        f"{checkpoint_run} is not an .onnx file; serving a checkpoint exports it first, which needs onnx, not "
        f"installed here: {install_command('export')}, or serve the .onnx file that `flowrl export` writes",
    )


def test_eval_of_a_checkpoint_without_torch_names_the_train_extra(checkpoint_run):
    result = run_without("torch", "eval", str(checkpoint_run), "--episodes", "1")
    assert_one_line_error(result, f"flowrl eval needs torch, which is not installed: {install_command('train')}")


def test_export_without_onnx_names_the_export_extra(checkpoint_run, tmp_path):
    result = run_without("onnx", "export", str(checkpoint_run), "--out", str(tmp_path / "policy.onnx"))
    assert_one_line_error(result, f"flowrl export needs onnx, which is not installed: {install_command('export')}")
    assert not (tmp_path / "policy.onnx").exists()


def test_a_module_of_two_extras_names_the_one_of_the_command(monkeypatch):
    """torch is in both [train] and [export]: `flowrl export` needs only the smaller one."""
    installed_as_picked(monkeypatch, picked="onnxruntime-gpu", installed=("onnxruntime-gpu",))
    torch_missing = ModuleNotFoundError(name="torch.nn")
    assert missing_extra_message(torch_missing, "export").endswith('pip install "flowrl-deploy[export]"')
    assert missing_extra_message(torch_missing, "eval").endswith('pip install "flowrl-deploy[train]"')


# The base requirements pick the runtime by marker; these markers pick the one named whatever the platform.
ALWAYS, NEVER = 'python_version >= "3"', 'python_version < "3"'
PICKS = {"onnxruntime-gpu": (ALWAYS, NEVER), "onnxruntime": (NEVER, ALWAYS)}  # (onnxruntime-gpu's, onnxruntime's)
EXPORT = ('torch<2.14,>=2.4; extra == "export"', 'onnx>=1.16; extra == "export"')
TRAIN = ('torch<2.14,>=2.4; extra == "train"', 'dm_control>=1.0.20; extra == "train"')


def installed_as_picked(monkeypatch, picked: str, installed: tuple[str, ...]) -> None:
    """flowrl-deploy's metadata with base requirements picking ``picked``, and ``installed`` the onnxruntime
    distributions installed (what extras reads, faked: nothing is installed or removed)."""
    gpu, cpu = PICKS[picked]
    requires = ["numpy>=1.24", f"onnxruntime-gpu>=1.22; {gpu}", f"onnxruntime>=1.22; {cpu}", *EXPORT, *TRAIN]
    real_version = extras.metadata.version

    def version(name: str) -> str:
        if extras._normalized(name) in extras.RUNTIMES:
            if extras._normalized(name) not in installed:
                raise extras.metadata.PackageNotFoundError(name)
            return "1.32.0"
        return real_version(name)

    monkeypatch.setattr(extras.metadata, "requires", lambda name: requires if name == "flowrl-deploy" else None)
    monkeypatch.setattr(extras.metadata, "version", version)


@pytest.mark.parametrize(
    ("picked", "installed", "adds"),
    [
        ("onnxruntime-gpu", ("onnxruntime",), "put onnxruntime-gpu over the onnxruntime installed here"),  # CPU-only
        ("onnxruntime", ("onnxruntime-gpu",), "put onnxruntime over the onnxruntime-gpu installed here"),  # Jetson
        ("onnxruntime-gpu", (), "add onnxruntime-gpu, left out here"),
    ],
    ids=["cpu-only x86-64", "jetson", "no runtime"],
)
def test_a_robot_install_with_another_runtime_is_told_the_extras_requirements(monkeypatch, picked, installed, adds):
    """docs/install.md's CPU-only and Jetson installs (`--no-deps` with their own onnxruntime): pip installing
    "flowrl-deploy[export]" there put the other onnxruntime distribution over the one in place (the same module;
    removing either broke it). The message lists the extra's own requirements, without the base ones."""
    pytest.importorskip("packaging")
    installed_as_picked(monkeypatch, picked, installed)
    message = missing_extra_message(ModuleNotFoundError(name="onnx"), "export")
    assert message == (
        'flowrl export needs onnx, which is not installed: pip install "torch<2.14,>=2.4" "onnx>=1.16"  '
        f'# the extra\'s requirements alone: "flowrl-deploy[export]" would {adds}'
    )
    assert install_command("train,export") == (
        'pip install "torch<2.14,>=2.4" "dm_control>=1.0.20" "onnx>=1.16"  '
        f'# the extras\' requirements alone: "flowrl-deploy[train,export]" would {adds}'
    )
    # pasted into a shell as it is, the reason a comment
    assert shlex.split(install_command("export"), comments=True) == ["pip", "install", "torch<2.14,>=2.4", "onnx>=1.16"]


@pytest.mark.parametrize("installed", [("onnxruntime-gpu",), ("onnxruntime", "onnxruntime-gpu")])
def test_an_install_with_the_runtime_its_requirements_pick_is_told_the_extra(monkeypatch, installed):
    installed_as_picked(monkeypatch, "onnxruntime-gpu", installed)
    message = missing_extra_message(ModuleNotFoundError(name="onnx"), "export")
    assert message == 'flowrl export needs onnx, which is not installed: pip install "flowrl-deploy[export]"'


def test_the_runtime_is_picked_by_the_installed_metadata_on_this_platform(monkeypatch):
    """The real flowrl-deploy metadata, evaluated here: only the other runtime installed gets the extra's
    requirements, the one its markers pick gets the extra."""
    pytest.importorskip("packaging")
    from packaging.requirements import Requirement

    try:
        requires = extras.metadata.requires("flowrl-deploy") or []
    except extras.metadata.PackageNotFoundError:
        pytest.skip("flowrl-deploy is not installed (run from a tree): its requirements are unknown")
    base = [Requirement(line) for line in requires if "extra ==" not in line]
    (picked,) = [r.name for r in base if r.name in extras.RUNTIMES and (r.marker is None or r.marker.evaluate())]
    (other,) = set(extras.RUNTIMES) - {picked}
    real_version = extras.metadata.version

    def only(name: str):
        def version(asked: str) -> str:
            if extras._normalized(asked) in extras.RUNTIMES and extras._normalized(asked) != name:
                raise extras.metadata.PackageNotFoundError(asked)
            return "1.32.0" if extras._normalized(asked) == name else real_version(asked)

        return version

    monkeypatch.setattr(extras.metadata, "version", only(picked))
    assert install_command("export") == 'pip install "flowrl-deploy[export]"'
    monkeypatch.setattr(extras.metadata, "version", only(other))
    command = install_command("export")
    assert command.startswith('pip install "torch') and '"onnx>=1.16"' in command and "numpy" not in command
    assert f"would put {picked} over the {other} installed here" in command


def test_a_missing_module_of_no_extra_is_a_bug_and_still_raises():
    @user_errors
    def broken_command() -> None:
        import flowrl_deploy.no_such_module  # noqa: F401

    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        broken_command()


API_WITHOUT = textwrap.dedent(
    """
    import sys

    for name in sys.argv[1].split(","):
        sys.modules[name] = None
    try:
        exec(sys.argv[2])
    except ImportError as exc:  # the Python API's error is still an ImportError
        print(type(exc).__name__, exc.name, exc, sep="\\n")
    except Exception as exc:
        print(type(exc).__name__)
    """
)


def api_without(modules: str, code: str) -> list[str]:
    """What ``code`` raised in a child process where ``modules`` (comma-separated) cannot be imported: the
    error's type, and for an ImportError its module's name and its message."""
    run = subprocess.run(
        [sys.executable, "-c", API_WITHOUT, modules, code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.splitlines()


def test_the_python_api_of_training_without_torch_names_the_extra():
    """`from flowrl_deploy.train import train` on a base install ended in a bare `No module named 'torch'`."""
    found = api_without("torch", "from flowrl_deploy.train import train")
    assert found == [
        "ModuleNotFoundError",
        "torch",
        f"flowrl_deploy.train.train needs torch, which is not installed: {install_command('train')}",
    ]


def test_the_python_api_of_export_without_onnx_names_the_extra(checkpoint_run, tmp_path):
    out = tmp_path / "policy.onnx"
    call = f"export_checkpoint({str(checkpoint_run)!r}, {str(out)!r})"
    found = api_without("onnx", f"from flowrl_deploy.export import export_checkpoint; {call}")
    assert found == [
        "ModuleNotFoundError",
        "onnx",
        f"flowrl_deploy.export.export_checkpoint needs onnx, which is not installed: {install_command('export')}",
    ]
    assert not out.exists()


def test_the_python_api_of_export_without_torch_names_the_extra_unless_not_verifying(checkpoint_run, tmp_path):
    """Verification compares the graph with the torch sampler: without torch it is named before any work;
    `verify=False` needs no torch (this fake checkpoint's actor then stops it, as it would with torch)."""
    pytest.importorskip("onnx")
    export = "from flowrl_deploy.export import ExportConfig, export_checkpoint; "
    export += f"export_checkpoint({str(checkpoint_run)!r}"
    found = api_without("torch", f"{export}, {str(tmp_path / 'p.onnx')!r})")
    assert found == [
        "ModuleNotFoundError",
        "torch",
        f"flowrl_deploy.export.export_checkpoint needs torch, which is not installed: {install_command('export')}",
    ]
    assert api_without("torch", f"{export}, {str(tmp_path / 'p.onnx')!r}, ExportConfig(verify=False))") == [
        "CheckpointError"
    ]


def test_the_python_apis_error_keeps_the_module_and_its_cause():
    with pytest.raises(ImportError) as raised, naming_the_extra("export", "export_checkpoint"):
        raise ModuleNotFoundError("No module named 'onnx'", name="onnx")
    assert type(raised.value) is ModuleNotFoundError and raised.value.name == "onnx"
    assert str(raised.value) == missing_extra_message(ModuleNotFoundError(name="onnx"), "export", "export_checkpoint")
    assert str(raised.value).startswith("export_checkpoint needs onnx, which is not installed: pip install ")
    assert str(raised.value.__cause__) == "No module named 'onnx'"
    with (
        pytest.raises(ModuleNotFoundError, match="no_such_module") as raised,
        naming_the_extra("train", "flowrl_deploy.train.train"),
    ):
        import flowrl_deploy.no_such_module  # noqa: F401  (a bug, not an install to complete: raised as it was)
    assert raised.value.__cause__ is None


@needs_extras("train", "export")
def test_demo_without_onnx_or_matplotlib_says_so_before_training(tmp_path):
    """It trained for minutes, then stopped at the export (or at the plots) with half a report folder."""
    result = run_without("onnx,matplotlib", "demo", "--out", str(tmp_path / "demo"), "--steps", "300")
    assert_one_line_error(
        result,
        "flowrl demo trains, exports and plots: it needs matplotlib, onnx, not installed here: "
        f"{install_command('train,export')}",
    )
    assert not (tmp_path / "demo").exists()


def test_eval_on_a_gymnasium_task_without_gymnasium_names_the_train_extra(tmp_path):
    policy = write_policy(tmp_path / "policy.onnx")
    result = run_without("gymnasium", "eval", str(policy), "--env", "Pendulum-v1", "--episodes", "1")
    assert_one_line_error(
        result, f"gymnasium is not installed, so Pendulum-v1 cannot be made: {install_command('train')}"
    )


@needs_extras("train", "export")
def test_demo_of_a_dmc_task_does_not_ask_for_gymnasium(tmp_path):
    """gymnasium is needed for gymnasium tasks only: without it the default dmc demo gets past the check
    (stopped here by an impossible --hidden, which is checked next)."""
    result = run_without("gymnasium", "demo", "--out", str(tmp_path / "demo"), "--hidden", "0")
    assert result.returncode == 1 and "gymnasium" not in result.stderr and "--hidden" in result.stderr
