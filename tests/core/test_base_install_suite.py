"""The suite on a robot computer's base install plus the dev extra (no torch, dm_control, mujoco,
gymnasium, tensorboard or matplotlib): every module collects, and the tests that need a missing extra
are reported skipped naming the install to run, never a collection error or a failure. The absence
is simulated by ``sys.modules[name] = None`` in a child pytest."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from flowrl_deploy.extras import EXTRAS_OF

ROOT = Path(__file__).resolve().parents[2]
LACKING = sorted(set(EXTRAS_OF) - {"onnx"})  # the dev extra installs onnx (tests/helpers/tiny_policy.py)

PYTEST_WITHOUT = textwrap.dedent(
    """
    import sys

    for name in sys.argv[1].split(","):
        sys.modules[name] = None  # import name -> ModuleNotFoundError, as if it were not installed
    import pytest

    sys.exit(pytest.main(["-q", "-rs", "-p", "no:cacheprovider", *sys.argv[2:]]))
    """
)


def pytest_without_extras(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PYTEST_WITHOUT, ",".join(LACKING), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def test_every_module_collects_and_those_needing_an_extra_say_which():
    result = pytest_without_extras("--collect-only")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"\d+ tests collected in .*", lines[-1]), result.stdout[-3000:]  # no "N errors"
    for entry, extras, install in [
        ("tests/train", "[train] and [export] extras", ".[train,export]"),
        ("tests/export", "[train] and [export] extras", ".[train,export]"),
        ("tests/cli/test_train_cli.py", "[train] extra", ".[train]"),
    ]:
        assert any(
            line.startswith("SKIPPED [")
            and f"] {entry}: needs the {extras} (torch, " in line
            and line.endswith(f'not installed): pip install -e "{install}"')
            for line in lines
        ), f"no skip line for {entry}:\n" + result.stdout[-3000:]


def test_the_tests_needing_an_extra_skip_instead_of_failing():
    result = pytest_without_extras(
        "tests/cli/test_out_not_a_directory.py",
        "tests/serve/test_serve_model_file.py::test_serving_a_checkpoint_holding_a_pipe_is_refused_not_read",
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert result.stdout.splitlines()[-1].startswith("4 skipped in "), result.stdout[-3000:]
    assert 'needs the [export] extra (torch not installed): pip install -e ".[export]"' in result.stdout
