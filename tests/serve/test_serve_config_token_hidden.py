"""The token never shows in ``repr(ServeConfig)`` (an embedding program that logs its config, an
assertion's message, an error reporter's frame locals) nor in the error for a token of another type."""

from __future__ import annotations

import pytest

from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve import ServeConfig

SECRET = "s3cret-token-xyz"


def test_the_token_is_not_in_the_configs_repr():
    config = ServeConfig("policy.onnx", token=SECRET)
    assert "s3cret" not in repr(config) and "s3cret" not in str(config)
    assert "policy.onnx" in repr(config)  # the other fields still show
    assert config.token == SECRET


@pytest.mark.parametrize("token", [SECRET.encode(), 12345678, [SECRET]])
def test_a_token_of_another_type_is_refused_by_its_type_alone(token):
    with pytest.raises(FlowRLError) as info:
        ServeConfig("policy.onnx", token=token)
    assert "--token must be" in str(info.value) and type(token).__name__ in str(info.value)
    assert "s3cret" not in str(info.value) and "12345678" not in str(info.value)
