"""`flowrl serve --no-reload`: robots share one token, and Reload let any of them swap the served model
for another file beside it (a stolen robot's disk could flip a fleet's policy); a server run with it
refuses every Reload and keeps serving, and --watch still swaps files."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tiny_policy import write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.client import PolicyClient, ServiceError
from flowrl_deploy.serve import PolicyServer, ServeConfig

OBS = np.array([0.3, -0.2, 0.1], np.float32)


@pytest.mark.parametrize("path", ["", "other.onnx"])
def test_a_server_without_reload_refuses_every_reload_and_keeps_serving(tmp_path, path):
    policy = write_policy(tmp_path / "policy.onnx")
    write_policy(tmp_path / "other.onnx", scale=2.0)
    config = ServeConfig(str(policy), port=0, grace_s=0, reload=False)
    with PolicyServer(config).start() as server, PolicyClient(server.address) as client:
        version = client.spec().model_version
        with pytest.raises(ServiceError) as refused:
            client.reload(path)
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "this server takes no Reload calls (flowrl serve --no-reload)" in refused.value.details
        assert client.spec().model_version == version
        client.act(OBS)


def test_reload_is_on_by_default_and_the_flag_turns_it_off():
    assert ServeConfig("policy.onnx").reload is True
    result = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200)
    assert "--reload / --no-reload" in result.output
