"""A refused obs shape is named as the client sent it, with the shapes the method takes (foreign review
F6): a wrong 1-D [n] was echoed as [1, n], a shape the client never sent, and StreamAct, which takes one
observation per request, offered [B, obs_dim]."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tiny_policy import OBS_DIM

from flowrl_deploy.codec import TensorError, encode, policy_batch
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.proto.flowrl.v1 import policy_pb2_grpc as pb_grpc

TAKES = f"[{OBS_DIM}] or [B, {OBS_DIM}]"


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.PolicyServiceStub(channel)


def _act_refused(stub, shape: tuple[int, ...]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        stub.Act(pb.ActRequest(obs=encode(np.zeros(shape, np.float32))), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return refused.value


@pytest.mark.parametrize("shape", [(OBS_DIM - 1,), (OBS_DIM + 1,), (2, OBS_DIM + 1), (1, 1, OBS_DIM)])
def test_act_names_a_wrong_shape_as_sent(stub, shape):
    assert _act_refused(stub, shape).details() == f"obs: shape {list(shape)} does not match {TAKES}"


@pytest.mark.parametrize("shape", [(OBS_DIM - 1,), (1, OBS_DIM + 1), (1, 1, OBS_DIM)])
def test_stream_act_offers_only_the_shapes_it_takes(stub, shape):
    obs = encode(np.zeros(shape, np.float32))
    (reply,) = stub.StreamAct(iter([pb.StreamActRequest(seq=1, obs=obs)]), timeout=10)
    assert reply.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert reply.status.message == f"obs: shape {list(shape)} does not match [{OBS_DIM}] or [1, {OBS_DIM}]"


def test_stream_act_still_names_a_batch_of_two(stub):
    obs = encode(np.zeros((2, OBS_DIM), np.float32))
    (reply,) = stub.StreamAct(iter([pb.StreamActRequest(seq=1, obs=obs)]), timeout=10)
    assert reply.status.message == "obs: StreamAct takes one observation per request, got 2"


def test_the_local_runtime_names_a_wrong_shape_as_given():
    with pytest.raises(TensorError, match=r"^obs: shape \[2\] does not match \[3\] or \[B, 3\]$"):
        policy_batch(np.zeros(2), 3, name="obs")
    assert policy_batch(np.zeros(3), 3, name="obs").shape == (1, 3)
