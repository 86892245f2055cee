"""A tiny policy file and a real server on a free local port, shared by a test module."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_policy import write_policy

from flowrl_deploy.serve import PolicyServer, ServeConfig


@pytest.fixture(scope="module")
def policy_path(tmp_path_factory) -> Path:
    return write_policy(tmp_path_factory.mktemp("policy") / "policy.onnx")


@pytest.fixture(scope="module")
def server(policy_path):
    with PolicyServer(ServeConfig(str(policy_path), port=0, grace_s=0.5)).start() as running:
        yield running
