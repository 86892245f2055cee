"""ControlSession's contract pin against real tiny servers: a session pins the contract it read when it
opened, so a server restarted with another interface is refused, not followed; a wrong pin is refused
when the session is made, a malformed one before any call."""

from __future__ import annotations

import json
import re
import time

import grpc
import numpy as np
import pytest
from tiny_policy import tiny_contract, write_policy

from flowrl_deploy.client import ContractMismatchError, PolicyClient, ServiceError, checked_contract_hash
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve import PolicyServer, ServeConfig

OBS = np.array([0.3, -0.2, 0.1], np.float32)
UNUSED = "127.0.0.1:1"  # nothing listens: a call that went out would fail UNAVAILABLE
WIDER = {"action_low": (-2.0, -4.0), "action_high": (2.0, 4.0)}
"""Another interface of the same shapes and names: bounds twice as wide."""


@pytest.fixture(scope="module")
def policy_path(tmp_path_factory):
    return write_policy(tmp_path_factory.mktemp("pin") / "policy.onnx")


@pytest.fixture(scope="module")
def client(policy_path):
    with (
        PolicyServer(ServeConfig(str(policy_path), port=0, grace_s=0)).start() as server,
        PolicyClient(server.address) as connected,
    ):
        yield connected


def test_an_unpinned_session_refuses_a_server_restarted_with_another_contract(policy_path, tmp_path):
    """It followed the new server silently: actions out of the bounds that session.info reported."""
    wider = write_policy(tmp_path / "wider.onnx", scale=20.0, **WIDER)
    first = PolicyServer(ServeConfig(str(policy_path), port=0, grace_s=0)).start()
    port = first.port
    with PolicyClient(f"127.0.0.1:{port}") as client:
        control = client.session(period_s=0.02, deadline_s=0.02, seed=0, backoff_s=(0.01, 0.05))
        assert control.contract_hash == control.info.contract_hash  # pinned, though the caller pinned nothing
        control.deadline_s = 10.0  # the tick that opens the stream: a fresh action however loaded the machine
        control.act(OBS)
        assert control.timings[-1].source == "server"
        control.deadline_s = 0.02
        first.stop(grace=0)
        with PolicyServer(ServeConfig(str(wider), port=port, grace_s=0)).start():
            until = time.monotonic() + 10
            with pytest.raises(ContractMismatchError) as info:
                while time.monotonic() < until:
                    action = control.act(OBS)
                    assert np.all(action >= control.info.action_low) and np.all(action <= control.info.action_high)
                    time.sleep(0.005)
            control.close()
    error = info.value
    assert isinstance(error, ServiceError) and error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "action_low" in str(error) and "action_high" in str(error)  # the difference, named
    assert "since this session opened" in str(error)


def test_a_wrong_hash_pin_is_refused_when_the_session_is_made(client):
    """It was refused only inside the first act(), when the robot may already be enabled."""
    served = client.spec().contract_hash
    with pytest.raises(ContractMismatchError) as info:
        client.session(period_s=0.02, contract_hash="DEADBEEFDEADBEEF")
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    message = str(info.value)
    assert f"pinned policy contract deadbeefdeadbeef, the server serves {served}" in message
    assert "flowrl inspect --server" in message  # the hash alone names no field: how to compare


def test_a_wrong_contract_pin_is_refused_naming_the_fields_that_differ(client):
    with pytest.raises(ContractMismatchError, match=r"server != client: .*action_high"):
        client.session(period_s=0.02, contract=tiny_contract(**WIDER))


def test_the_right_pin_in_any_case_is_accepted(client):
    served = client.spec().contract_hash
    with client.session(period_s=0.02, contract_hash=served.upper()) as control:
        assert control.contract_hash == served
        control.act(OBS)


@pytest.mark.parametrize("pin", ["not-a-hash", "deadbeef", "0" * 17, "g" * 16, 12345])
def test_a_malformed_pin_is_refused_before_any_call(pin):
    why = "contract_hash must be 16 hex digits (the contract hash `flowrl inspect` prints)"
    with PolicyClient(UNUSED) as client, pytest.raises(FlowRLError, match=f"^{re.escape(why)}, got {pin!r}"):
        client.session(period_s=0.02, contract_hash=pin)  # UNUSED: no GetSpec went out
    with pytest.raises(FlowRLError, match=r"^--contract-hash must be 16 hex digits"):
        checked_contract_hash(pin, "--contract-hash")


def test_a_hash_and_a_contract_that_disagree_are_refused_before_any_call():
    """Both pins given, of two contracts: which one the caller meant is unknown, so neither is sent (the
    server would trust the hash and ignore the contract)."""
    other = tiny_contract(**WIDER)
    why = f"contract_hash {'0' * 16} is not the hash of the contract given, {other.hash()}: pin one of them"
    with PolicyClient(UNUSED) as client, pytest.raises(FlowRLError, match=f"^{re.escape(why)}$"):
        client.session(period_s=0.02, contract_hash="0" * 16, contract=other)  # UNUSED: no GetSpec went out
    with PolicyClient(UNUSED) as client, pytest.raises(ServiceError):  # the same pin twice passes on to GetSpec
        client.session(
            period_s=0.02,
            contract_hash=other.hash().upper(),
            contract=other,
        )


def test_a_reset_after_the_contract_changed_is_refused_as_a_mismatch(client):
    with client.session(period_s=0.02) as control:
        wider = tiny_contract(**WIDER)  # as if the server had changed since the session opened
        control._contract_hash, control._contract_json = wider.hash(), json.dumps(wider.to_dict(), sort_keys=True)
        with pytest.raises(ContractMismatchError, match=r"action_high"):  # the difference, named as act() does
            control.reset(seed=1)


@pytest.mark.parametrize("pin", [None, ""])
def test_no_pin_is_none_or_empty(client, pin):
    """None (os.environ.get of an unset variable) means no pin, as '' does: the session pins what it is served."""
    with client.session(period_s=0.02, contract_hash=pin) as control:
        assert control.contract_hash == client.spec().contract_hash and not control.pinned
