"""A malformed pin is the client's mistake, refused as such (foreign review F7): a contract_hash that is not
16 hex digits (a C++ client's truncated or whitespace-padded string) was answered FAILED_PRECONDITION, as a
contract the server does not serve. It is INVALID_ARGUMENT now, by the rule the Python client checks
before it calls (checked_contract_hash), showing what was sent, printably and bounded."""

from __future__ import annotations

import json
import re

import grpc
import numpy as np
import pytest
from tiny_policy import OBS_DIM, tiny_contract, write_policy

from flowrl_deploy import contract
from flowrl_deploy.client import checked_contract_hash as client_checked_contract_hash
from flowrl_deploy.codec import encode
from flowrl_deploy.contract import checked_contract_hash
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.proto.flowrl.v1 import policy_pb2_grpc as pb_grpc
from flowrl_deploy.serve import PolicyServer, ServeConfig

OBS = encode(np.zeros(OBS_DIM, np.float32))
WHY = "contract_hash must be 16 hex digits (the contract hash `flowrl inspect` prints), got "
MALFORMED = ["xyz", " 0123456789abcdef", "0123456789abcdef ", "0123456789abcdef\n", "0123456789abcde", "0" * 17]


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.PolicyServiceStub(channel)


def _refused(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        call(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
    return refused.value


@pytest.mark.parametrize("pin", [*MALFORMED, "g" * 16, "٠" * 16])  # Arabic-Indic zeros: \d, not hex
def test_a_malformed_pin_is_invalid_argument_in_act(stub, pin):
    assert _refused(stub.Act, pb.ActRequest(obs=OBS, contract_hash=pin)).details() == WHY + repr(pin)


def test_a_malformed_pin_is_invalid_argument_in_reset_and_stream_act(stub):
    assert _refused(stub.Reset, pb.ResetRequest(session_id="malformed", contract_hash="xyz")).details() == WHY + "'xyz'"
    opening = pb.StreamActRequest(seq=1, obs=OBS, contract_hash="xyz")
    (reply,) = stub.StreamAct(iter([opening]), timeout=10)
    assert (reply.status.code, reply.status.message) == (grpc.StatusCode.INVALID_ARGUMENT.value[0], WHY + "'xyz'")


def test_a_long_or_unprintable_pin_is_shown_bounded_and_printable(stub):
    details = _refused(stub.Act, pb.ActRequest(obs=OBS, contract_hash="\x1b[31m" + "x" * 10_000)).details()
    assert details.startswith(WHY + "'\\x1b[31mxxx") and details.endswith("…")
    assert details.isprintable() and len(details) < len(WHY) + 60


def test_the_served_pin_in_capitals_is_accepted(stub):
    served = stub.GetSpec(pb.GetSpecRequest(), timeout=10).contract_hash
    assert stub.Act(pb.ActRequest(obs=OBS, contract_hash=served.upper()), timeout=10).action.shape
    wrong = "DEADBEEF" * 2  # well formed, not served: still a mismatch
    with pytest.raises(grpc.RpcError) as refused:
        stub.Act(pb.ActRequest(obs=OBS, contract_hash=wrong), timeout=10)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details().startswith("client pinned policy contract deadbeefdeadbeef, the server serves ")


def test_the_client_and_the_server_share_one_rule():
    assert client_checked_contract_hash is checked_contract_hash
    assert checked_contract_hash("ABCDEF0123456789") == "abcdef0123456789"
    assert checked_contract_hash(None) == checked_contract_hash("") == ""
    with pytest.raises(FlowRLError, match=f"^--pin must be 16 hex digits .*, got {re.escape(repr(12345))}$"):
        checked_contract_hash(12345, "--pin")
    assert contract.CONTRACT_HASH_FORM.pattern == "[0-9a-fA-F]{16}"


def test_a_wrong_pin_beside_the_served_contract_json_says_that_the_hash_is_not_the_contracts(stub):
    """A hash pinned with the served contract's JSON: no field differs, so the refusal says which of the
    two is wrong instead of naming an empty list of differences (foreign review F8)."""
    spec = stub.GetSpec(pb.GetSpecRequest(), timeout=10)
    request = pb.ResetRequest(session_id="pair", contract_hash="0" * 16, contract_json=spec.contract_json)
    with pytest.raises(grpc.RpcError) as refused:
        stub.Reset(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details() == (
        f"client pinned policy contract {'0' * 16}, the server serves {spec.contract_hash}; the contract_json "
        "sent has the served contract's fields, so the pinned hash is not its hash: pin the hash `flowrl "
        "inspect` prints of the policy file the client expects"
    )


@pytest.mark.parametrize("pin", [False, True])
def test_a_contract_json_equal_in_its_fields_but_written_otherwise_is_told_so(tmp_path, pin):
    """-0.0 for a bound of 0.0: the fields compare equal, the JSON the hash covers does not. No pin, or
    the pin of that JSON, is not 'a pinned hash that is not the JSON's' (diff review F2)."""
    served = write_policy(tmp_path / "policy.onnx", action_low=(0.0, -2.0))
    theirs = tiny_contract(action_low=(-0.0, -2.0))
    request = pb.ResetRequest(
        session_id="z", contract_hash=theirs.hash() if pin else "", contract_json=json.dumps(theirs.to_dict())
    )
    with (
        PolicyServer(ServeConfig(str(served), port=0, grace_s=0)).start() as server,
        grpc.insecure_channel(server.address) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        pb_grpc.PolicyServiceStub(channel).Reset(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details().endswith(
        f"; the contract_json sent has the served contract's fields but writes a value otherwise (hash "
        f"{theirs.hash()}): send the contract_json GetSpec gives"
    )


@pytest.mark.parametrize("call", ["act", "act_reply", "reset"])
def test_policy_clients_unary_calls_refuse_a_malformed_pin_before_calling(client, call):
    """The CHANGELOG said Python clients refuse such a pin before any call; PolicyClient.act sent it, and
    got the server's INVALID_ARGUMENT (a ServiceError) or, from a v0.1.0 server, FAILED_PRECONDITION."""
    from flowrl_deploy.client import ServiceError

    obs = np.zeros(OBS_DIM, np.float32)
    send = {
        "act": lambda pin: client.act(obs, contract_hash=pin, timeout_s=10),
        "act_reply": lambda pin: client.act_reply(obs, contract_hash=pin, timeout_s=10),
        "reset": lambda pin: client.reset("pin-form", 1, contract_hash=pin, timeout_s=10),
    }[call]
    with pytest.raises(FlowRLError) as refused:
        send("xyz")
    assert not isinstance(refused.value, ServiceError) and str(refused.value) == WHY + "'xyz'"
    served = client.spec().contract_hash
    send(served.upper())  # capitals are still taken
