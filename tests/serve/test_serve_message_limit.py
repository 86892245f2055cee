"""`--max-message-bytes` is the limit of what a server accepts (requests), not of its own replies: it
capped both, so a value of a few hundred bytes broke GetStats and GetSpec (and with it `flowrl control`)
while health said SERVING, and one below a single observation's request started a server that
refused every call. Such a value is refused as the model loads, naming the least that works."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_policy import write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.client import PolicyClient
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.serve.servicer import request_floor

WIDE = 64  # actions per observation: an Act reply is 64 times its request's observation bytes


@pytest.fixture(scope="module")
def wide_policy(tmp_path_factory):
    """One observation in, 64 actions out: replies much larger than their requests."""
    return write_policy(
        tmp_path_factory.mktemp("limit") / "wide.onnx",
        obs_dim=1,
        act_dim=WIDE,
        obs_layout=(("position", 1),),
        action_low=(-1.0,) * WIDE,
        action_high=(1.0,) * WIDE,
        action_names=tuple(f"a{i}" for i in range(WIDE)),
    )


def test_replies_larger_than_the_request_limit_are_sent(wide_policy):
    limit = 16 * 1024
    config = ServeConfig(str(wide_policy), port=0, grace_s=0, max_message_bytes=limit)
    with PolicyServer(config).start() as server, PolicyClient(server.address) as client:
        spec = client.spec()
        actions = client.act(np.zeros((1024, 1), np.float32))  # 4 KiB asked, 256 KiB answered
        assert actions.shape == (1024, WIDE)
        with pytest.raises(Exception, match="larger than max"):  # requests are still held to it
            client.act(np.zeros((1024 * 8, 1), np.float32))
        assert client.stats().model_version == spec.model_version


def test_the_least_limit_serves_a_control_session(tmp_path):
    policy = write_policy(tmp_path / "policy.onnx")
    with PolicyServer(ServeConfig(str(policy), port=0, grace_s=0)).start() as server:
        floor = request_floor(server.servicer.model.contract)
    config = ServeConfig(str(policy), port=0, grace_s=0, max_message_bytes=floor)
    with PolicyServer(config).start() as server, PolicyClient(server.address) as client:
        # the largest request of one observation: a StreamAct opening a session, with the contract
        contract = client.spec().contract
        opening = {"session_id": "s" * 256, "seed": 2**64 - 1, "contract": contract}
        with client.session(period_s=10, deadline_s=10, **opening) as control:
            control.act(np.zeros(3, np.float32))
            assert control.timings[-1].source == "server", control.timings[-1]
        assert client.stats().sessions == 0 and client.spec().obs_dim == 3


def test_a_limit_below_one_observations_request_is_refused_as_the_model_loads(tmp_path):
    policy = write_policy(tmp_path / "policy.onnx")
    with pytest.raises(FlowRLError) as refused:
        PolicyServer(ServeConfig(str(policy), port=0, grace_s=0, max_message_bytes=100)).start()
    message = str(refused.value)
    assert message.startswith("--max-message-bytes 100 is less than ") and "give at least" in message, message
    result = CliRunner().invoke(app, ["serve", str(policy), "--port", "0", "--max-message-bytes", "10"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--max-message-bytes 10 is less than" in errors[0], result.output


def test_a_limit_one_byte_below_the_least_is_refused(tmp_path):
    policy = write_policy(tmp_path / "policy.onnx")
    with PolicyServer(ServeConfig(str(policy), port=0, grace_s=0)).start() as server:
        floor = request_floor(server.servicer.model.contract)
    with pytest.raises(FlowRLError, match=f"^--max-message-bytes {floor - 1} is less than the {floor} bytes"):
        PolicyServer(ServeConfig(str(policy), port=0, grace_s=0, max_message_bytes=floor - 1)).start()
