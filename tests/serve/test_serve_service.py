"""A real server on a free port: health, parity with in-process onnxruntime, every bad input."""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tiny_policy import ACT_DIM, OBS_DIM, documented_noise, tiny_contract, write_policy

from flowrl_deploy.client import PolicyClient, ServiceError
from flowrl_deploy.codec import decode, encode
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.policy import OnnxPolicy
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.proto.flowrl.v1 import policy_pb2_grpc as pb_grpc
from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.serve.servicer import MAX_KEPT_OPENINGS


def _obs(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, OBS_DIM)).astype(np.float32)


def _noise(generator: np.random.Generator, batch: int) -> np.ndarray:
    return generator.standard_normal((batch, ACT_DIM), dtype=np.float32)


def test_health_is_serving_after_warm_up(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "flowrl.v1.PolicyService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(server):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = stub.ServerReflectionInfo(iter([request]), timeout=2)
        names = {s.name for s in next(replies).list_services_response.service}
    assert {"flowrl.v1.PolicyService", "grpc.health.v1.Health"} <= names


def test_spec_describes_the_served_policy(client, local):
    info = client.spec()
    assert (info.obs_dim, info.act_dim) == (OBS_DIM, ACT_DIM)
    assert info.obs_names == ("position[0]", "position[1]", "velocity[0]")
    assert info.action_names == ("left", "right")
    np.testing.assert_array_equal(info.action_high, [1.0, 2.0])
    assert info.takes_noise
    assert info.contract_hash == local.contract_hash
    assert info.model_version.startswith("v1-")


def test_act_with_seed_equals_onnxruntime_with_that_noise(client, local):
    obs = _obs(4)
    reply = client.act_reply(obs, seed=123)
    expected = local.act(obs, _noise(documented_noise(123), 4))

    np.testing.assert_allclose(decode(reply.action), expected, rtol=1e-6, atol=1e-6)
    assert reply.model_version == client.spec().model_version
    assert reply.inference_us > 0
    assert reply.server_send_unix_ns >= reply.server_recv_unix_ns
    assert not np.allclose(client.act(obs, seed=1), client.act(obs, seed=2), atol=1e-3)  # the noise matters


def test_one_dimensional_obs_gives_one_action(client, local):
    obs = _obs(1)[0]
    action = client.act(obs, seed=5)
    assert action.shape == (ACT_DIM,)
    np.testing.assert_allclose(action, local.act(obs[None], _noise(documented_noise(5), 1))[0], atol=1e-6)


def test_session_noise_continues_and_reset_reseeds(client, local):
    client.reset("robot-a", seed=9)
    generator = documented_noise(9)
    obs = _obs(2, seed=1)
    for _ in range(3):
        expected = local.act(obs, _noise(generator, 2))
        np.testing.assert_allclose(client.act(obs, session_id="robot-a"), expected, atol=1e-6)
    client.reset("robot-a", seed=9)
    np.testing.assert_allclose(
        client.act(obs, session_id="robot-a"), local.act(obs, _noise(documented_noise(9), 2)), atol=1e-6
    )


@pytest.mark.parametrize("seed", [0, 2])
def test_act_refuses_a_session_and_a_seed_together(client, seed):
    """The seed was ignored without a word: the session's generator drew the noise."""
    client.reset("robot-b", seed=1)
    with pytest.raises(ServiceError, match="not both") as info:
        client.act(_obs(1), session_id="robot-b", seed=seed)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_reset_without_a_seed_makes_the_session_unseeded(client, local):
    obs = _obs(1)
    client.reset("robot-c", seed=7)
    client.reset("robot-c")
    generator = documented_noise(7)
    seeded = [local.act(obs, _noise(generator, 1)) for _ in range(3)]  # three: a clipped draw can repeat
    assert not np.allclose([client.act(obs, session_id="robot-c") for _ in range(3)], seeded, atol=1e-4)


def test_stream_act_equals_onnxruntime_and_echoes_seq(server, client, local):
    stub = client.stub
    generator = documented_noise(42)
    observations = [_obs(1, seed=s)[0] for s in range(5)]

    requests = [
        pb.StreamActRequest(session_id="s1", seq=10 + i, obs=encode(o), seed=42 if i == 0 else None)
        for i, o in enumerate(observations)
    ]
    replies = list(stub.StreamAct(iter(requests), timeout=5))
    assert [r.seq for r in replies] == [10, 11, 12, 13, 14]
    for obs, reply in zip(observations, replies, strict=True):
        assert reply.status.code == 0
        expected = local.act(obs[None], _noise(generator, 1))[0]
        np.testing.assert_allclose(decode(reply.action), expected, atol=1e-6)
        assert reply.model_version.startswith("v1-")


BAD_OBS = [
    (pb.Tensor(shape=[OBS_DIM + 1], values=[0.0] * (OBS_DIM + 1)), "does not match"),
    (pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[OBS_DIM], data=b"\0" * 8 * OBS_DIM), "DTYPE_FLOAT64"),
    (pb.Tensor(shape=[OBS_DIM], values=[0.0, float("nan"), 0.0]), "NaN"),
    (pb.Tensor(shape=[OBS_DIM], values=[0.0, float("inf"), 0.0]), "NaN, infinite or beyond-float32 values"),
    (pb.Tensor(), "missing shape"),
    (pb.Tensor(shape=[0, OBS_DIM]), "empty"),
    (pb.Tensor(shape=[2000, OBS_DIM], data=b"\0" * 4 * 2000 * OBS_DIM), "exceeds the limit"),
]


@pytest.mark.parametrize(("tensor", "message"), BAD_OBS)
def test_bad_obs_is_invalid_argument_and_the_next_call_succeeds(client, tensor, message):
    with pytest.raises(grpc.RpcError) as info:
        client.stub.Act(pb.ActRequest(obs=tensor), timeout=2)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    assert "Traceback" not in info.value.details()
    assert client.act(_obs(1)[0]).shape == (ACT_DIM,)


def test_oversized_message_is_resource_exhausted(client):
    big = np.zeros((1, 400_000), np.float32)  # 1.6 MB > the 1 MiB default limit
    with pytest.raises(ServiceError) as info:
        client.act(big)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.act(_obs(1)[0]).shape == (ACT_DIM,)


def test_bad_obs_on_a_stream_keeps_the_stream_open(client):

    requests = [
        pb.StreamActRequest(session_id="s2", seq=1, obs=pb.Tensor(shape=[OBS_DIM], values=[0.0, float("nan"), 0.0])),
        pb.StreamActRequest(session_id="s2", seq=2, obs=encode(_obs(1)[0])),
    ]
    first, second = client.stub.StreamAct(iter(requests), timeout=5)
    assert first.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "NaN" in first.status.message
    assert second.status.code == 0 and second.seq == 2


def test_a_stream_request_of_more_than_one_observation_is_invalid_argument(client):
    requests = [pb.StreamActRequest(session_id="pair", seq=1, obs=encode(_obs(2)))]
    (reply,) = client.stub.StreamAct(iter(requests), timeout=5)
    assert reply.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert reply.status.message == "obs: StreamAct takes one observation per request, got 2"
    assert not reply.HasField("action")


def test_reset_without_a_session_id_is_invalid_argument(client):
    with pytest.raises(ServiceError) as info:
        client.reset("", seed=1)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details == "Reset needs a session_id"


def test_unknown_session_is_not_found(client):
    with pytest.raises(ServiceError) as info:
        client.act(_obs(1), session_id="nobody")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert "nobody" in info.value.details


def _assert_dropped_soon(client: PolicyClient, session_id: str) -> None:
    """The session is dropped soon, well before any idle sweep (--session-idle-s, 600 s): a stream's
    eviction runs after its end, in gRPC's thread, which a loaded machine may run seconds late."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            client.act(_obs(1), session_id=session_id)
        except ServiceError as exc:
            assert exc.code == grpc.StatusCode.NOT_FOUND
            return
        time.sleep(0.02)
    pytest.fail("the stream's session outlived its stream")


def test_stream_session_is_evicted_when_the_stream_ends(client):

    list(
        client.stub.StreamAct(iter([pb.StreamActRequest(session_id="brief", seq=1, obs=encode(_obs(1)[0]))]), timeout=5)
    )
    _assert_dropped_soon(client, "brief")


def test_a_stream_session_reset_by_its_own_robot_is_still_evicted_when_the_stream_ends(client):
    """ControlSession.reset calls Reset on its stream's session: that must not take the session from
    the stream (a session no stream owns outlives it until the idle sweep)."""
    with client.session(period_s=0.5, seed=1) as control:
        control.act(_obs(1)[0])
        control.reset(seed=2)
        control.act(_obs(1)[0])
        assert [t.source for t in control.timings] == ["server", "server"]
    _assert_dropped_soon(client, control.session_id)


def test_sessions_opened_by_reset_are_dropped_when_idle_but_stream_sessions_are_not(tmp_path):
    path = write_policy(tmp_path / "policy.onnx")
    # 1 s: "busy", last used just before the sweep, is still fresh however late a loaded machine runs it
    config = ServeConfig(str(path), port=0, grace_s=0, session_idle_s=1.0)
    with PolicyServer(config).start() as server, PolicyClient(server.address) as client:
        requests: queue.SimpleQueue = queue.SimpleQueue()
        stream = client.stub.StreamAct(iter(requests.get, None), timeout=30)
        requests.put(pb.StreamActRequest(session_id="streamed", seq=1, obs=encode(_obs(1)[0])))
        assert next(stream).status.code == 0
        client.reset("idle", seed=1)
        idle_since = time.monotonic()
        client.reset("busy", seed=1)
        while time.monotonic() - idle_since < 1.2:  # "busy" is used every 0.1 s, "idle" not at all
            time.sleep(0.1)
            client.act(_obs(1), session_id="busy")
        with pytest.raises(ServiceError) as info:  # no new session opened meanwhile: idle is idle all the same
            client.act(_obs(1), session_id="idle")
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        client.act(_obs(1), session_id="busy")
        client.act(_obs(1), session_id="streamed")  # its stream is open: never dropped for idleness
        requests.put(None)
        list(stream)


def test_idle_reset_sessions_leave_the_count_without_a_new_session_opening(tmp_path):
    """GetStats' sessions (and flowrl_sessions, the sessions limit's use) leave out the sessions Reset
    opened that went idle: they stayed counted after a burst of Resets until another session opened."""
    config = ServeConfig(str(write_policy(tmp_path / "policy.onnx")), port=0, grace_s=0, session_idle_s=0.5)
    with PolicyServer(config).start() as server, PolicyClient(server.address) as client:
        for i in range(5):
            client.reset(f"burst-{i}", seed=i)
        assert client.stats().sessions == 5
        time.sleep(0.8)
        assert client.stats().sessions == 0


def test_expired_stream_deadline_is_deadline_exceeded_not_a_late_answer(client):

    reply = next(
        client.stub.StreamAct(iter([pb.StreamActRequest(session_id="d", seq=1, obs=encode(_obs(1)[0]), timeout_us=1)]))
    )
    assert reply.status.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert not reply.HasField("action")


def test_pinned_contract_mismatch_names_the_difference(client, local):
    other = tiny_contract(action_high=(1.0, 3.0))
    with pytest.raises(grpc.RpcError) as info:
        client.stub.Reset(pb.ResetRequest(session_id="pinned", contract_json=json.dumps(other.to_dict())), timeout=2)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "action_high" in info.value.details()
    with pytest.raises(ServiceError, match="deadbeefdeadbeef") as info:
        client.act(_obs(1), contract_hash="deadbeef" * 2)  # 16 hex digits: a shorter pin is malformed
    assert "contract_json" not in info.value.details  # a field of the protocol, not something a user can do
    assert "only the hash" in info.value.details and "flowrl inspect" in info.value.details
    client.reset("pinned", contract_hash=local.contract_hash)  # the right hash is accepted


@pytest.mark.parametrize("contract_json", ["[1, 2]", "3", '"text"', "null", "{", "{}", '{"obs_dim": "3"}'])
def test_a_contract_json_that_is_no_contract_is_invalid_argument(client, contract_json):
    with pytest.raises(grpc.RpcError) as info:
        client.stub.Reset(pb.ResetRequest(session_id="pinned", contract_json=contract_json), timeout=2)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("contract_json is not a policy contract: ")


def _act_counts(stats: pb.GetStatsReply) -> tuple[int, int]:
    """(requests, errors) of Act in ``stats``; (0, 0) before the first Act call."""
    act = next((m for m in stats.methods if m.method == "Act"), None)
    return (act.requests, act.errors) if act else (0, 0)


def test_stats_count_calls_and_errors(client):
    before = client.stats()
    with pytest.raises(ServiceError):
        client.act(np.zeros(OBS_DIM + 1, np.float32))  # refused before inference: no batch
    client.act(_obs(1))
    after = client.stats()
    (requests, errors), (requests_after, errors_after) = _act_counts(before), _act_counts(after)
    assert (requests_after - requests, errors_after - errors) == (2, 1)
    assert after.batches - before.batches == 1
    assert after.model_version.startswith("v1-")


def _wait_for_act_counts(client: PolicyClient, requests: int) -> tuple[int, int]:
    """Act's (requests, errors) once the server has counted ``requests`` Act calls (it counts a call
    when its handler ends, which may be after the client gave up on it)."""
    until = time.monotonic() + 30
    counts = _act_counts(client.stats())
    while counts[0] < requests and time.monotonic() < until:
        time.sleep(0.02)
        counts = _act_counts(client.stats())
    return counts


def test_an_action_ready_after_its_deadline_is_deadline_exceeded_not_sent(server, client, monkeypatch):
    model = server.servicer.model
    original = model.run

    def slow_run(obs: np.ndarray, noise: np.ndarray | None) -> tuple[np.ndarray, int]:
        time.sleep(0.05)  # starts well before the deadline, ends after it
        return original(obs, noise)

    monkeypatch.setattr(model, "run", slow_run)
    request = pb.StreamActRequest(session_id="late", seq=1, obs=encode(_obs(1)[0]), timeout_us=10_000)
    reply = next(client.stub.StreamAct(iter([request]), timeout=5))
    assert reply.status.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert not reply.HasField("action") and not reply.model_version
    # unary: the client gives up by itself; the server must count the late answer as DEADLINE_EXCEEDED
    requests, errors = _act_counts(client.stats())
    with pytest.raises(ServiceError) as info:
        client.act(_obs(1), timeout_s=0.01)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _wait_for_act_counts(client, requests + 1) == (requests + 1, errors + 1)


def test_an_internal_error_sends_no_traceback_and_the_next_call_succeeds(server, client, monkeypatch, caplog):
    """The client gets a bare INTERNAL; the server's log keeps the traceback, to find the bug."""
    model = server.servicer.model
    original = model.run
    poison = np.full(OBS_DIM, 99.0, np.float32)

    def failing_run(obs: np.ndarray, noise: np.ndarray | None) -> tuple[np.ndarray, int]:
        if (obs == poison).all(axis=1).any():
            raise RuntimeError("secret /srv/keys/robot.pem")
        return original(obs, noise)

    monkeypatch.setattr(model, "run", failing_run)
    caplog.set_level(logging.ERROR, logger="flowrl.serve")
    with pytest.raises(ServiceError) as info:
        client.act(poison)
    assert info.value.code == grpc.StatusCode.INTERNAL
    for leak in ("secret", "Traceback", "robot.pem", "RuntimeError"):
        assert leak not in info.value.details
    assert client.act(_obs(1)[0]).shape == (ACT_DIM,)
    requests = [
        pb.StreamActRequest(session_id="internal", seq=1, obs=encode(poison)),
        pb.StreamActRequest(session_id="internal", seq=2, obs=encode(_obs(1)[0])),
    ]
    failed, answered = client.stub.StreamAct(iter(requests), timeout=5)
    assert failed.status.code == grpc.StatusCode.INTERNAL.value[0]
    for leak in ("secret", "Traceback", "robot.pem", "RuntimeError"):
        assert leak not in failed.status.message
    assert answered.status.code == 0 and decode(answered.action).shape == (ACT_DIM,)
    logged = [(r.getMessage(), r.exc_info and str(r.exc_info[1])) for r in caplog.records if r.name == "flowrl.serve"]
    secret = "secret /srv/keys/robot.pem"
    assert logged == [("Act failed", secret), ("StreamAct request failed", secret)]


def test_health_is_not_serving_until_the_model_is_warm(policy_path, monkeypatch):
    from flowrl_deploy.serve.model import ServedModel

    warming, release = threading.Event(), threading.Event()
    original = ServedModel.warm_up

    def slow_warm_up(self, batches, **kwargs):
        warming.set()
        release.wait(10)
        return original(self, batches, **kwargs)

    monkeypatch.setattr(ServedModel, "warm_up", slow_warm_up)
    server = PolicyServer(ServeConfig(str(policy_path), port=0, grace_s=0))
    starter = threading.Thread(target=server.start)
    starter.start()
    try:
        assert warming.wait(10)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            probe = health_pb2_grpc.HealthStub(channel)
            status = probe.Check(health_pb2.HealthCheckRequest(), timeout=2).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.PolicyServiceStub(channel).GetSpec(pb.GetSpecRequest(), timeout=2)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            release.set()
            starter.join(10)
            status = probe.Check(health_pb2.HealthCheckRequest(), timeout=2).status
            assert status == health_pb2.HealthCheckResponse.SERVING
    finally:
        release.set()
        starter.join(10)
        server.stop(grace=0)


def test_a_reconnected_stream_keeps_its_session_when_the_old_stream_ends(client):
    def open_stream():
        requests: queue.SimpleQueue = queue.SimpleQueue()
        replies = client.stub.StreamAct(iter(requests.get, None), timeout=10)
        return requests, replies

    def tick(stream, seq):
        requests, replies = stream
        requests.put(pb.StreamActRequest(session_id="shared", seq=seq, obs=encode(_obs(1)[0])))
        return next(replies)

    old, new = open_stream(), open_stream()
    assert tick(old, 1).status.code == 0
    assert tick(new, 1).status.code == 0  # the robot reconnected: the new stream takes the session over
    old[0].put(None)
    list(old[1])  # the old stream ends; its eviction must spare the taken-over session
    time.sleep(0.1)
    assert tick(new, 2).status.code == 0
    assert client.act(_obs(1), session_id="shared").shape == (1, ACT_DIM)
    new[0].put(None)
    list(new[1])


def test_the_deterministic_graph_is_served_without_noise(tmp_path):
    path = write_policy(tmp_path / "deterministic.onnx", deterministic=True)
    obs = _obs(3)
    with PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as server, PolicyClient(server.address) as c:
        assert not c.spec().takes_noise
        expected = OnnxPolicy(path).act(obs)
        np.testing.assert_allclose(c.act(obs, seed=1), expected, atol=1e-6)
        np.testing.assert_allclose(c.act(obs, seed=2), expected, atol=1e-6)
        with c.session(period_s=0.5) as control:
            np.testing.assert_allclose(control.act(obs[0]), expected[0], atol=1e-6)


def test_the_session_limit_holds_exactly_max_sessions(tmp_path):
    path = write_policy(tmp_path / "policy.onnx")
    config = ServeConfig(str(path), port=0, grace_s=0, max_sessions=2)
    with PolicyServer(config).start() as server, PolicyClient(server.address) as client:
        client.reset("a", seed=1)
        client.reset("b", seed=1)
        client.reset("b", seed=2)  # reseeding an open session is no new session
        assert server.servicer.sessions.count() == 2
        client.reset("c", seed=1)  # the table is full: "a", the least recently used Reset session, goes
        assert server.servicer.sessions.count() == 2
        with pytest.raises(ServiceError) as info:
            client.act(_obs(1)[0], session_id="a")
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        client.act(_obs(1)[0], session_id="b")


def test_a_stream_without_session_id_keeps_one_seeded_session(client, local):
    """The first request's seed seeds the stream's session; later requests continue its noise."""
    generator = documented_noise(77)
    observations = [_obs(1, seed=s)[0] for s in range(4)]
    requests = [
        pb.StreamActRequest(seq=i, obs=encode(o), seed=77 if i == 0 else None) for i, o in enumerate(observations)
    ]
    replies = list(client.stub.StreamAct(iter(requests), timeout=5))
    for obs, reply in zip(observations, replies, strict=True):
        assert reply.status.code == 0
        np.testing.assert_allclose(decode(reply.action), local.act(obs[None], _noise(generator, 1))[0], atol=1e-6)


def _replies(client: PolicyClient, requests: list[pb.StreamActRequest]) -> list[pb.StreamActReply]:
    return list(client.stub.StreamAct(iter(requests), timeout=5))


@pytest.mark.parametrize(
    "pin",
    [
        {"contract_hash": "0000000000000000"},
        {"contract_json": json.dumps(tiny_contract(action_high=(1.0, 3.0)).to_dict())},
        {"contract_json": "{"},
    ],
)
@pytest.mark.parametrize("session_id", ["pin", ""])
def test_a_refused_pin_is_not_bypassed_by_the_streams_next_request(client, pin, session_id):
    """A client sending its pin with the first request only (the proto reads it when the session
    opens) was refused once, then served by the policy it had rejected on the next, pinless tick (or
    one sending its seed again); without a session_id, each request was a new private session."""
    obs = encode(_obs(1)[0])
    first = pb.StreamActRequest(session_id=session_id, seq=1, obs=obs, seed=3, **pin)
    later = [
        pb.StreamActRequest(session_id=session_id, seq=2, obs=obs),
        pb.StreamActRequest(session_id=session_id, seq=3, obs=obs, seed=3),
    ]
    replies = _replies(client, [first, *later])
    assert replies[0].status.code != 0
    refusal = (replies[0].status.code, replies[0].status.message)
    assert [(r.status.code, r.status.message) for r in replies[1:]] == [refusal] * 2
    assert not any(r.HasField("action") for r in replies)


@pytest.mark.parametrize(
    ("pins", "second_seed", "seed"),
    [
        ("hash", None, 7),  # the refused opening's seed is kept
        ("hash", 9, 9),  # a seed sent with the new pin replaces it
        ("json", None, 7),  # a corrected contract_json alone opens it
    ],
)
def test_a_stream_request_with_its_own_pin_replaces_a_refused_one(client, local, pins, second_seed, seed):
    obs = _obs(1)[0]
    wrong, right = (
        ({"contract_hash": "0000000000000000"}, {"contract_hash": local.contract_hash.upper()})
        if pins == "hash"
        else (
            {"contract_json": json.dumps(tiny_contract(action_high=(1.0, 3.0)).to_dict())},
            {"contract_json": json.dumps(local.contract.to_dict())},
        )
    )
    first = pb.StreamActRequest(session_id="fixed", seq=1, obs=encode(obs), seed=7, **wrong)
    second = pb.StreamActRequest(session_id="fixed", seq=2, obs=encode(obs), seed=second_seed, **right)
    refused, opened = _replies(client, [first, second])
    assert (refused.status.code, opened.status.code) == (grpc.StatusCode.FAILED_PRECONDITION.value[0], 0)
    expected = local.act(obs[None], _noise(documented_noise(seed), 1))[0]
    np.testing.assert_allclose(decode(opened.action), expected, atol=1e-6)


def test_a_stream_keeps_a_few_unopened_sessions_and_forgets_no_refused_pin(client):
    """Each refused opening is kept until its session opens; a stream naming ever new session ids is
    refused past a few, rather than forgetting the oldest (whose pin was then bypassed)."""
    obs = encode(_obs(1)[0])
    pinned = [
        pb.StreamActRequest(session_id=f"s{i}", seq=i, obs=obs, contract_hash="0000000000000000")
        for i in range(MAX_KEPT_OPENINGS + 1)
    ]
    again = [pb.StreamActRequest(session_id=f"s{i}", seq=i, obs=obs) for i in (0, 1, MAX_KEPT_OPENINGS)]
    replies = _replies(client, [*pinned, *again])
    refused, exhausted = grpc.StatusCode.FAILED_PRECONDITION.value[0], grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert [r.status.code for r in replies] == [refused] * MAX_KEPT_OPENINGS + [exhausted, refused, refused, exhausted]
    assert "sessions it could not open yet" in replies[MAX_KEPT_OPENINGS].status.message


def test_a_refused_opening_keeps_its_seed_for_the_retry(tmp_path, local):
    """An opening refused for a passing reason (the session limit) is tried again by the next
    request: with the seed the refused one sent, not unseeded."""
    path = write_policy(tmp_path / "policy.onnx")
    obs = _obs(1)[0]
    config = ServeConfig(str(path), port=0, grace_s=0, max_sessions=1)
    with PolicyServer(config).start() as server, PolicyClient(server.address) as client:
        hold = threading.Event()

        def holder_requests():
            yield pb.StreamActRequest(session_id="other", seq=0, obs=encode(obs))
            hold.wait(30)

        holder = client.stub.StreamAct(holder_requests(), timeout=10)
        assert next(holder).status.code == 0  # "other" holds the one session allowed until its stream ends
        go = threading.Event()

        def requests():
            yield pb.StreamActRequest(session_id="s", seq=1, obs=encode(obs), seed=7)
            go.wait(30)
            yield from (pb.StreamActRequest(session_id="s", seq=i, obs=encode(obs)) for i in (2, 3))

        replies = client.stub.StreamAct(requests(), timeout=10)
        assert next(replies).status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        hold.set()
        assert list(holder) == []  # its stream ends: "other" is evicted
        deadline = time.monotonic() + 30
        while client.stats().sessions and time.monotonic() < deadline:
            time.sleep(0.01)
        go.set()
        later = list(replies)
    generator = documented_noise(7)  # the refused tick drew no noise
    assert len(later) == 2
    for reply in later:
        assert reply.status.code == 0
        np.testing.assert_allclose(decode(reply.action), local.act(obs[None], _noise(generator, 1))[0], atol=1e-6)


def test_a_stream_joining_a_reset_session_without_a_seed_keeps_its_noise(client, local):
    """Reset(seed) for a new episode, then a stream on that session: the join reseeded it unseeded."""
    client.reset("episode", seed=3)
    obs = _obs(1)[0]
    generator = documented_noise(3)
    replies = _replies(client, [pb.StreamActRequest(session_id="episode", seq=i, obs=encode(obs)) for i in range(2)])
    for reply in replies:
        np.testing.assert_allclose(decode(reply.action), local.act(obs[None], _noise(generator, 1))[0], atol=1e-6)
    client.reset("episode", seed=3)
    joined = _replies(client, [pb.StreamActRequest(session_id="episode", seq=0, obs=encode(obs), seed=4)])[0]
    np.testing.assert_allclose(  # a join with a seed does reseed
        decode(joined.action), local.act(obs[None], _noise(documented_noise(4), 1))[0], atol=1e-6
    )


@pytest.mark.parametrize("timeout_us", [0, -1, -5, -(2**62)])
def test_a_stream_budget_at_or_below_zero_is_no_deadline(client, timeout_us):
    """The first releases served a negative timeout_us without a deadline, and a C++/ROS client written
    then may send -1 for "none": refused as past its deadline, its robot ran its fallback on every tick,
    with nothing but DEADLINE_EXCEEDED to say why. 0 or below is no deadline, as the .proto says."""
    request = pb.StreamActRequest(session_id="late", seq=1, obs=encode(_obs(1)[0]), timeout_us=timeout_us)
    (reply,) = _replies(client, [request])
    assert reply.status.code == 0 and reply.HasField("action"), reply.status.message


def test_the_proto_says_a_budget_at_or_below_zero_is_no_deadline():
    proto = (Path(__file__).resolve().parents[2] / "flowrl_deploy/proto/flowrl/v1/policy.proto").read_text()
    comment = proto[proto.index("int64 client_send_unix_ns = 4;") : proto.index("int64 timeout_us = 5;")]
    assert "0 or below: none" in comment and "passed already" not in comment


def test_act_with_session_id_and_seed_says_what_to_send_instead(client):
    with pytest.raises(grpc.RpcError) as info:
        client.stub.Act(pb.ActRequest(obs=encode(_obs(1)[0]), session_id="r1", seed=7), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Reset(session_id, seed)" in info.value.details() and "without session_id" in info.value.details()


def test_spec_reports_the_request_batch_limit_not_the_batching_size(tmp_path):
    path = write_policy(tmp_path / "policy.onnx")
    config = ServeConfig(str(path), port=0, grace_s=0, max_batch=2, max_request_batch=5)
    with PolicyServer(config).start() as server, PolicyClient(server.address) as client:
        assert client.spec().max_batch == 5
        assert client.act(_obs(5)).shape == (5, ACT_DIM)  # as many rows as the spec allows
        with pytest.raises(ServiceError, match="exceeds the limit of 5"):
            client.act(_obs(6))


def test_act_stamps_its_reply_after_the_inference(server, client, monkeypatch):
    """server_send_unix_ns - server_recv_unix_ns is the time the server held the call."""
    from flowrl_deploy.serve import servicer as servicer_module

    clock = [1_000_000]
    monkeypatch.setattr(servicer_module, "time", SimpleNamespace(**{**vars(time), "time_ns": lambda: clock[0]}))
    model = server.servicer.model
    original = model.run

    def run_for_5_us(obs: np.ndarray, noise: np.ndarray | None) -> tuple[np.ndarray, int]:
        clock[0] += 5_000
        return original(obs, noise)

    monkeypatch.setattr(model, "run", run_for_5_us)
    reply = client.act_reply(_obs(1), seed=3)
    assert (reply.server_recv_unix_ns, reply.server_send_unix_ns) == (1_000_000, 1_005_000)


def test_a_reset_keeps_a_reseeded_session_for_another_idle_period(tmp_path, monkeypatch):
    """Idleness counts from the last Reset or Act (fake clock): a session reset 7 s ago survives
    the sweep of a 10 s idle limit even though it was opened 15 s ago."""
    from flowrl_deploy.serve import sessions as sessions_module

    clock = [time.monotonic()]
    monkeypatch.setattr(sessions_module, "time", SimpleNamespace(**{**vars(time), "monotonic": lambda: clock[0]}))
    path = write_policy(tmp_path / "policy.onnx")
    config = ServeConfig(str(path), port=0, grace_s=0, session_idle_s=10)
    with PolicyServer(config).start() as server, PolicyClient(server.address) as client:
        client.reset("robot", seed=1)
        clock[0] += 8
        client.reset("robot", seed=2)
        clock[0] += 7
        client.reset("newcomer", seed=3)  # opening a session sweeps those idle for 10 s
        np.testing.assert_allclose(
            client.act(_obs(1), session_id="robot"),
            OnnxPolicy(path).act(_obs(1), _noise(documented_noise(2), 1)),
            atol=1e-6,
        )


def test_the_docs_grpcurl_example_is_an_act_request_the_server_answers(tmp_path):
    """docs/client.md "From C++, ROS 2 or another language": its JSON body and method name, sent as they stand."""
    page = (Path(__file__).parents[2] / "docs" / "client.md").read_text()
    example = re.search(r"<!-- grpcurl-example -->(.*?)<!-- /grpcurl-example -->", page, re.S).group(1)
    body = re.search(r"-d '(.*?)'", example).group(1)
    service, method = re.search(r"(flowrl\.v1\.PolicyService)/(\w+)", example).groups()
    assert service == pb.DESCRIPTOR.services_by_name["PolicyService"].full_name
    request = json_format.Parse(body, pb.ActRequest())
    obs_dim = len(request.obs.values)
    path = write_policy(tmp_path / "policy.onnx", obs_dim=obs_dim, obs_layout=(("x", obs_dim),))
    with (
        PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        reply = getattr(pb_grpc.PolicyServiceStub(channel), method)(request, timeout=5)
    action = decode(reply.action, name="action")
    assert action.shape == (ACT_DIM,)
    contract = tiny_contract()
    assert np.all(action >= contract.action_low) and np.all(action <= contract.action_high)


def test_a_stream_taking_over_a_session_another_stream_holds_is_logged(policy_path, caplog):
    """Two robots given one session id silently shared one generator (the second stream takes the
    session over, as a reconnecting robot's must): one warning names the id, escaped and cut short, and
    at most one a minute follows however often it happens (a client in a loop wrote 140 lines a second)."""
    session_id = "robot\n7" + "x" * 200

    def open_stream(session: str):
        requests: queue.SimpleQueue = queue.SimpleQueue()
        replies = client.stub.StreamAct(iter(requests.get, None), timeout=30)
        requests.put(pb.StreamActRequest(session_id=session, obs=encode(_obs(1)[0])))
        assert next(replies).status.code == 0
        return requests, replies

    def close(stream) -> None:
        stream[0].put(None)
        list(stream[1])

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "taken over" in r.message]

    config = ServeConfig(str(policy_path), port=0, grace_s=0)
    with (
        PolicyServer(config).start() as server,
        PolicyClient(server.address) as client,
        caplog.at_level(logging.WARNING, logger="flowrl.serve"),
    ):
        first = open_stream(session_id)
        second = open_stream(session_id)  # the first stream still holds it
        close(first)
        close(second)
        client.reset("joined", seed=1)  # a session Reset opened has no stream: joining it takes nothing over
        close(open_stream("joined"))
        close(open_stream("joined-later"))
        close(open_stream("joined-later"))  # its first stream had ended: nothing taken over
        shown = "robot\\n7" + "x" * 93 + "…"
        assert warnings() == [
            f"session {shown} taken over by another stream (a robot's reconnect, or two robots sharing one id)"
        ]
        for _ in range(5):  # five more takeovers within the minute: held back, and counted
            held = open_stream("flood")
            close(open_stream("flood"))
            close(held)
        assert len(warnings()) == 1


def test_a_server_entered_without_start_is_started_and_stopped_by_the_block(policy_path):
    """`with PolicyServer(config) as server:` left it unstarted, its address 127.0.0.1:0."""
    config = ServeConfig(str(policy_path), port=0, grace_s=0)
    for server in (PolicyServer(config), PolicyServer(config).start()):
        with server as entered, PolicyClient(entered.address) as client:
            assert entered is server and server.port != 0
            assert client.act(_obs(1)).shape == (1, ACT_DIM)
        with pytest.raises(FlowRLError, match="was stopped"), server:
            pass
