"""Fixtures of the export tests."""

from __future__ import annotations

import pytest
from export_fixtures import SPEC, actor_tensors

from flowrl_deploy.checkpoint import save_checkpoint


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "step_1", spec=SPEC, actor=actor_tensors())


@pytest.fixture
def reference():
    from flowrl_deploy.export.verify import reference_actor

    return reference_actor(actor_tensors(), SPEC)
