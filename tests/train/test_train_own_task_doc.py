"""docs/train.md "A task of your own": a gymnasium env registered by the page's module, named with its
module prefix, trains and evaluates with the page's commands, its module on PYTHONPATH. The form worked
but no page a user reads said how."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

from doc_pages import python_block, section

PAGE, HEADING = "docs/train.md", "Tasks and settings"

MYSIM = """\
from gymnasium.envs.classic_control.pendulum import PendulumEnv


class MyEnv(PendulumEnv):
    '''A stand-in for the user's simulator: a 1-D Box action, flat observations, dt 0.05 s.'''
"""

SMALL = ["--steps", "10", "--start-steps", "10", "--hidden", "8", "--eval-every", "10", "--eval-episodes", "1"]
"""Flags that make the page's training command a few seconds' run."""


def _commands() -> list[list[str]]:
    """The page's `flowrl` commands of the section's bash block, as argument lists after `flowrl`."""
    text = section(PAGE, HEADING).split("\n## ", 1)[0]
    block = textwrap.dedent(text.split("```bash\n", 1)[1].split("```", 1)[0])
    return [line.split("#")[0].split()[1:] for line in block.splitlines() if line.startswith("flowrl ")]


def _flowrl(args: list[str], cwd, pythonpath: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)  # a PYTHONPATH of the environment's own (an install with --target) stays after the task's
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "flowrl_deploy.cli", *args],
        cwd=cwd,
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_pages_module_and_commands_train_and_evaluate_a_task_of_your_own(tmp_path):
    folder = tmp_path / "mytask"  # not the working directory, which `python -m` puts on the path
    folder.mkdir()
    (folder / "mysim.py").write_text(MYSIM)
    (folder / "mymodule.py").write_text(textwrap.dedent(python_block(PAGE, HEADING)))
    train, evaluate = _commands()
    assert train[:3] == ["train", "--env", "mymodule:MyEnv-v0"] and evaluate[:2] == ["eval", "runs/my"]
    trained = _flowrl([*train, *SMALL], tmp_path, str(folder))
    assert trained.returncode == 0, trained.stderr
    evaluated = _flowrl([*evaluate[:2], "--episodes", "1"], tmp_path, str(folder))
    assert evaluated.returncode == 0, evaluated.stderr
    assert re.match(r"mymodule:MyEnv-v0: return -?\d", evaluated.stdout), evaluated.stdout
    elsewhere = _flowrl([*evaluate[:2], "--episodes", "1"], tmp_path, None)  # the module not on the path
    assert elsewhere.returncode == 1 and "PYTHONPATH" in elsewhere.stderr, elsewhere.stderr
