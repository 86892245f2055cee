"""Refusals of making an environment: a MUJOCO_GL that stops dm_control or MuJoCo from loading, and a
misspelled env id, each one line that says what to do; and no stray absl line when a task loads.

MUJOCO_GL is read once, when dm_control and MuJoCo are first imported, so each of its cases runs in a
child process of its own."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest
from tiny_policy import write_policy

from flowrl_deploy.errors import EnvIdError
from flowrl_deploy.train.envs import make_env

MAKE = textwrap.dedent(
    """
    import sys

    for name in sys.argv[2:]:
        sys.modules[name] = None  # import name -> ModuleNotFoundError, as if it were not installed
    from flowrl_deploy.errors import FlowRLError
    from flowrl_deploy.train.envs import make_env

    try:
        make_env(sys.argv[1], 0)
    except FlowRLError as exc:
        print(exc)
    else:
        print("made")
    """
)


def made_with(mujoco_gl: str, env_id: str, *hidden: str) -> tuple[str, str]:
    """What making ``env_id`` in a child process whose MUJOCO_GL is ``mujoco_gl`` printed (its error or
    'made') and wrote to stderr."""
    done = subprocess.run(
        [sys.executable, "-c", MAKE, env_id, *hidden],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": mujoco_gl},
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    return done.stdout.strip(), done.stderr.strip()


def test_eval_with_an_unknown_mujoco_gl_is_one_line_naming_it(tmp_path):
    """MUJOCO_GL=junk (exported for another tool) ended eval, control, train and demo in dm_control's traceback."""
    policy = write_policy(
        tmp_path / "cartpole.onnx", obs_dim=5, act_dim=1, action_low=(-1.0,), action_high=(1.0,), obs_layout=(),
        action_names=(), env_id="dmc:cartpole-swingup",
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "flowrl_deploy.cli", "eval", str(policy), "--episodes", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": "junk"},
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: dm_control cannot start with MUJOCO_GL='junk': not a value it knows")
    assert "unset MUJOCO_GL or set MUJOCO_GL=disable" in lines[0]


def test_a_mujoco_gl_backend_whose_library_is_missing_says_to_install_it_or_disable():
    """MUJOCO_GL=osmesa (or egl) where its library is missing: PyOpenGL's absence stands in for it here."""
    message, _ = made_with("egl", "dmc:cartpole-balance", "OpenGL")
    assert message.startswith("dm_control cannot start with MUJOCO_GL='egl': its egl OpenGL backend failed to load (")
    assert "unset MUJOCO_GL or set MUJOCO_GL=disable, or install" in message
    assert "\n" not in message


def test_a_mujoco_gymnasium_task_with_an_unknown_mujoco_gl_names_it():
    pytest.importorskip("gymnasium")
    message, _ = made_with("junk", "gym:HalfCheetah-v5")
    assert message.startswith("MuJoCo cannot start with MUJOCO_GL='junk': not a value it knows")


@pytest.mark.parametrize("mujoco_gl", ["disable", "off"])
def test_a_render_free_mujoco_gl_makes_the_task(mujoco_gl):
    assert made_with(mujoco_gl, "dmc:cartpole-balance")[0] == "made"


@pytest.mark.parametrize(
    ("text", "meant"),
    [
        ("dmc:Cartpole-Swingup", "dmc:cartpole-swingup"),
        ("cartpole-swingup", "dmc:cartpole-swingup"),
        ("dmc:cartpole_swingup", "dmc:cartpole-swingup"),
        ("dmc:cartpol-swingup", "dmc:cartpole-swingup"),
        ("dmc:cartpole-swingup-sparse", "dmc:cartpole-swingup_sparse"),
        ("dmc:ball-in-cup-catch", "dmc:ball_in_cup-catch"),
        ("Walker-Walk", "dmc:walker-walk"),
    ],
)
def test_a_misspelled_dm_control_id_gets_a_suggestion(text, meant):
    with pytest.raises(EnvIdError, match=f"did you mean {meant}\\?"):
        make_env(text, 0)


@pytest.mark.parametrize("text", ["dmc:zebra-gallop", "zebra-gallop", "dmc:nothing"])
def test_an_id_like_no_task_gets_no_suggestion(text):
    with pytest.raises(EnvIdError) as refused:
        make_env(text, 0)
    assert "did you mean" not in str(refused.value)
    assert "dmc:<domain>-<task>" in str(refused.value)  # the naming help stays


def test_a_task_loads_without_absls_deprecation_line():
    """cheetah's model uses settotalmass, which MuJoCo's compiler calls deprecated: dm_control passed that on
    as a `WARNING:absl:…` line ahead of every cheetah run's output (and eval's clear error for a wrong --env)."""
    assert made_with("disable", "dmc:cheetah-run") == ("made", "")


def test_absls_warnings_are_held_back_only_while_a_task_loads(caplog):
    """The filter is on the absl logger for the load alone: a warning dm_control logs later (MuJoCo's
    warning callback, an unstable simulation) is logged as before."""
    from absl import logging as absl_logging

    absl = logging.getLogger("absl")
    before = list(absl.filters)
    make_env("dmc:cheetah-run", 0).close()
    assert absl.filters == before
    with caplog.at_level("WARNING"):
        absl_logging.warning("compiler attribute 'x' is deprecated")
    assert any("compiler attribute 'x'" in r.getMessage() for r in caplog.records)
