"""Fixtures of the export tests. export_fixtures (torch) is imported in them: this file loads without
the extras, so that tests/conftest.py can report the folder's modules skipped on a base install."""

from __future__ import annotations

import pytest

from flowrl_deploy.checkpoint import save_checkpoint


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    from export_fixtures import SPEC, actor_tensors

    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "step_1", spec=SPEC, actor=actor_tensors())


@pytest.fixture
def reference():
    from export_fixtures import SPEC, actor_tensors

    from flowrl_deploy.export.verify import reference_actor

    return reference_actor(actor_tensors(), SPEC)
