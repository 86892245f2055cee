"""Making a dm_control env leaves the root logger as it found it."""

import os
import subprocess
import sys

import pytest

ROOT_HANDLERS_AFTER_A_DMC_ENV = """
import logging
before = list(logging.root.handlers)
from flowrl_deploy.train.envs import make_env
env = make_env("dmc:cartpole-balance", 0)
env.reset(1)
env.close()
assert logging.root.handlers == before, logging.root.handlers
logging.basicConfig(level=logging.INFO, format="mine %(message)s")
logging.info("configured")
"""


def test_a_dmc_env_leaves_the_root_logger_for_the_callers_basicconfig():
    """dm_control logs through absl, whose first message calls logging.basicConfig() on a root logger
    without handlers: a researcher's own basicConfig(level=INFO, format=...) after it did nothing."""
    pytest.importorskip("dm_control")
    done = subprocess.run(
        [sys.executable, "-c", ROOT_HANDLERS_AFTER_A_DMC_ENV],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mine configured" in done.stderr
