"""Token and TLS/mTLS: what they should refuse, they refuse; health probes need no token."""

from __future__ import annotations

import json
import threading
from collections import Counter
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from call_context import CallContext
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from flowrl_deploy.client import PolicyClient, ServiceError
from flowrl_deploy.codec import decode, encode
from flowrl_deploy.connection import is_loopback
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.proto.flowrl.v1 import policy_pb2_grpc as pb_grpc
from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.serve.interceptors import CONTROL_CALLS, SERVICE_NAME, OpenStreams
from flowrl_deploy.serve.server import connectable

pytest.importorskip("cryptography.x509")
from deploying import wait_for
from pki import issue, write_pem

OBS = np.zeros(3, np.float32)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = issue("flowrl test CA", ca=True)
    rogue_key, rogue_cert = issue("rogue CA", ca=True)
    files = {"ca": write_pem(directory, "ca", ca_key, ca_cert)}
    files["server"] = write_pem(directory, "server", *issue("localhost", ca_key, ca_cert.subject))
    files["client"] = write_pem(directory, "client", *issue("robot", ca_key, ca_cert.subject))
    files["rogue"] = write_pem(directory, "rogue", *issue("intruder", rogue_key, rogue_cert.subject))
    return files


def test_token_is_required_except_for_health(policy_path):
    with PolicyServer(ServeConfig(str(policy_path), port=0, token="s3cret", grace_s=0)).start() as server:
        for token in ("", "wrong"):
            with PolicyClient(server.address, token=token) as client, pytest.raises(ServiceError) as info:
                client.act(OBS)
            assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        with PolicyClient(server.address, token="wrong") as client, pytest.raises(ServiceError) as info:
            client.session(period_s=0.02)  # GetSpec
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        with PolicyClient(server.address, token="s3cret") as client:
            assert client.act(OBS).shape == (2,)
            with client.session(period_s=0.5, seed=0) as control:
                control.act(OBS)
                assert control.timings[-1].source == "server"
        with grpc.insecure_channel(server.address) as channel:
            probe = health_pb2_grpc.HealthStub(channel)
            status = probe.Check(health_pb2.HealthCheckRequest(), timeout=2).status
            assert status == health_pb2.HealthCheckResponse.SERVING


def test_a_token_with_inner_spaces_is_accepted(policy_path):
    config = ServeConfig(str(policy_path), port=0, token="my s3cret phrase", grace_s=0)
    with PolicyServer(config).start() as server, PolicyClient(server.address, token="my s3cret phrase") as client:
        assert client.act(OBS).shape == (2,)


def test_the_token_scheme_is_read_as_rfc_6750_says(policy_path):
    """The scheme is case-insensitive (RFC 7235): `authorization: bearer <token>` was UNAUTHENTICATED."""
    config = ServeConfig(str(policy_path), port=0, token="s3cret", grace_s=0)
    with PolicyServer(config).start() as server, PolicyClient(server.address) as client:
        stub = client.stub
        for sent, accepted in [
            ("bearer s3cret", True),
            ("BEARER s3cret", True),
            ("Bearer s3cret", True),
            ("Basic s3cret", False),
            ("Bearer  s3cret", False),
            ("s3cret", False),
            ("Bearer s3cret2", False),
        ]:
            try:
                stub.GetSpec(pb.GetSpecRequest(), metadata=(("authorization", sent),), timeout=2)
                outcome = True
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                outcome = False
            assert outcome is accepted, sent


def test_calls_refused_for_their_token_are_counted(policy_path):
    with PolicyServer(ServeConfig(str(policy_path), port=0, token="s3cret", grace_s=0)).start() as server:
        for token in ("", "wrong"):
            with PolicyClient(server.address, token=token) as client, pytest.raises(ServiceError):
                client.act(OBS)
        with PolicyClient(server.address, token="s3cret") as client:
            client.act(OBS)
        exposition = server.servicer.metrics.exposition()
    assert 'flowrl_requests_total{method="Act",code="UNAUTHENTICATED"} 2' in exposition
    assert 'flowrl_requests_total{method="Act",code="OK"} 1' in exposition


def test_open_streams_cannot_take_the_threads_of_other_calls_and_health_checks_always_answer(policy_path):
    """Anyone (health needs no token) made the server refuse every call, a robot's tokened Act and a
    kubelet's health Check included, by holding health Watches open (each holds a handler thread):
    gRPC refused the rest with "Concurrent RPC limit exceeded!", counted nowhere. Watches, reflection
    streams and the policy service's calls now have caps of their own, beyond which they are refused
    and counted, and health Checks have threads that no cap reaches."""
    config = ServeConfig(str(policy_path), port=0, workers=2, token="s3cret", grace_s=0)
    token = (("authorization", "Bearer s3cret"),)
    held = threading.Event()

    def held_open(request):
        yield request
        held.wait(30)

    def first_reply(stream) -> str | tuple[grpc.StatusCode, str]:
        try:
            next(stream)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
        return "open"

    def refused(limit: str, code=grpc.StatusCode.RESOURCE_EXHAUSTED) -> tuple[grpc.StatusCode, str]:
        return code, limit

    with PolicyServer(config).start() as server, grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)  # no token
        check = health_pb2.HealthCheckRequest()
        try:
            watches = [health.Watch(check, timeout=30) for _ in range(6)]  # docs/serve.md: Watches are capped at 4
            assert Counter(map(first_reply, watches)) == {
                "open": 4,
                refused("at most 4 open health Watch streams", grpc.StatusCode.UNIMPLEMENTED): 2,
            }
            with PolicyClient(server.address, token="s3cret") as client:
                assert client.act(OBS).shape == (2,)
            # the client has its reply before gRPC's done callback frees the call's workers slot
            assert wait_for(lambda: server._streams.usage()["workers"][0] == 0, timeout_s=10)
            reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
            listing = reflection_pb2.ServerReflectionRequest(list_services="")
            reflections = [reflect(held_open(listing), metadata=token, timeout=30) for _ in range(3)]  # capped at 2
            assert Counter(map(first_reply, reflections)) == {
                "open": 2,
                refused("at most 2 open reflection streams"): 1,
            }
            act = pb_grpc.PolicyServiceStub(channel).StreamAct
            request = pb.StreamActRequest(obs=encode(OBS))
            streams = [act(held_open(request), metadata=token, timeout=30) for _ in range(config.workers + 1)]
            assert Counter(map(first_reply, streams)) == {
                "open": config.workers,
                refused("all --workers 2 handler threads are busy (each open StreamAct holds one)"): 1,
            }
            # every cap reached: a health Check is still answered
            assert health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        finally:
            held.set()
        exposition = server.servicer.metrics.exposition()
    for method, code, count in (
        ("Watch", "UNIMPLEMENTED", 2),
        ("ServerReflectionInfo", "RESOURCE_EXHAUSTED", 1),
        ("StreamAct", "RESOURCE_EXHAUSTED", 1),
    ):
        assert f'flowrl_requests_total{{method="{method}",code="{code}"}} {count}' in exposition


def test_clients_with_client_side_health_checking_are_served_beyond_the_watch_cap(policy_path):
    """A gRPC client with client-side health checking (service config ``healthCheckConfig``) holds
    one health Watch per connection; a Watch refused with RESOURCE_EXHAUSTED made it take the server
    for unhealthy and fail every call of that connection with UNAVAILABLE, so the 5th and 6th such
    clients were shut out. A Watch over the cap is refused with UNIMPLEMENTED, on which the client
    gives up health checking and takes the server for healthy (gRFC A17)."""
    service_config = json.dumps(
        {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}
    )
    options = [("grpc.service_config", service_config), ("grpc.use_local_subchannel_pool", 1)]
    request = pb.ActRequest(obs=encode(OBS))
    with PolicyServer(ServeConfig(str(policy_path), port=0, grace_s=0)).start() as server:
        channels = [grpc.insecure_channel(server.address, options=options) for _ in range(6)]  # cap: 4 Watches
        try:
            replies = [pb_grpc.PolicyServiceStub(channel).Act(request, timeout=10) for channel in channels]
        finally:
            for channel in channels:
                channel.close()
        exposition = server.servicer.metrics.exposition()
    assert [decode(reply.action).shape for reply in replies] == [(2,)] * 6
    assert 'flowrl_requests_total{method="Watch",code="UNIMPLEMENTED"} 2' in exposition


def test_a_call_that_ended_before_its_handler_ran_frees_its_slot():
    """Its end callback is never called: the slot must be freed at once, or each such call leaked
    one, and the server refused every call after --workers of them."""
    refusals = []
    streams = OpenStreams(workers=1, on_refused=lambda method, cap: refusals.append((method, cap.limit)))
    details = SimpleNamespace(method=f"/{SERVICE_NAME}/Act")  # what intercept_service reads of grpc's
    handler = streams.intercept_service(lambda _: grpc.unary_unary_rpc_method_handler(lambda r, c: "acted"), details)
    assert [handler.stream_unary(iter(["obs"]), CallContext(ended=True)) for _ in range(2)] == ["acted", "acted"]
    assert refusals == [] and streams.wait_idle(0)


@pytest.mark.parametrize(
    ("host", "secured", "warning"),
    [
        ("0.0.0.0", {}, "with neither --token nor TLS: anyone"),
        ("0.0.0.0", {"token": "s3cret"}, "with --token but no TLS: the token crosses the network in clear text"),
        ("0.0.0.0", {"tls": True}, "with TLS but neither --token nor --client-ca: anyone"),
        ("0.0.0.0", {"tls": True, "token": "s3cret"}, None),
        ("127.0.0.1", {}, None),
    ],
)
def test_an_open_network_address_without_token_or_tls_is_warned_about(policy_path, pki, caplog, host, secured, warning):
    """A TLS server with no token or client certificate lets anyone call, and a token without TLS
    crosses the network in clear text: neither was warned about."""
    tls = {"tls_cert": pki["server"][0], "tls_key": pki["server"][1]} if secured.pop("tls", False) else {}
    config = ServeConfig(str(policy_path), host=host, port=0, grace_s=0, **secured, **tls)
    with caplog.at_level("WARNING", logger="flowrl.serve"), PolicyServer(config).start() as server:
        bound = server.bound_address
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert bound == f"{host}:{server.port}"
    assert server.address == f"127.0.0.1:{server.port}"  # where a client on this machine connects
    if warning:
        assert len(warnings) == 1 and bound in warnings[0] and warning in warnings[0]
    else:
        assert not warnings


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("0.0.0.0", "127.0.0.1:9"),
        ("::", "[::1]:9"),
        ("[::]", "[::1]:9"),  # a bound address prints IPv6 bracketed
        ("::1", "[::1]:9"),
        ("[::1]", "[::1]:9"),  # bracketed once, not twice
        ("10.0.0.7", "10.0.0.7:9"),
        ("robot-brain", "robot-brain:9"),
    ],
)
def test_connectable_maps_every_interface_to_loopback_and_keeps_other_hosts(host, address):
    assert connectable(host, 9) == address


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("", False),
        ("::", False),
        ("10.0.0.1", False),
        ("robot.example.com", False),
    ],
)
def test_only_addresses_this_machine_alone_reaches_are_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_localhost_without_token_or_tls_is_not_warned_about(policy_path, caplog):
    config = ServeConfig(str(policy_path), host="localhost", port=0, grace_s=0)
    with caplog.at_level("WARNING", logger="flowrl.serve"), PolicyServer(config).start():
        pass
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_stream_with_a_wrong_token_raises_instead_of_falling_back(policy_path, monkeypatch):
    config = ServeConfig(str(policy_path), port=0, token="s3cret", grace_s=0)
    with PolicyServer(config).start() as server, PolicyClient(server.address, token="s3cret") as client:
        spec = client.spec()  # GetSpec passes; then the secret changes before the stream opens
        monkeypatch.setattr(client, "spec", lambda *args, **kwargs: spec)
        client.metadata = (("authorization", "Bearer wrong"),)
        control = client.session(period_s=0.5)
        with pytest.raises(ServiceError) as info:
            control.act(OBS)
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        control.close()


def test_tls_serves_trusted_clients_and_refuses_plaintext(policy_path, pki):
    cert, key = pki["server"]
    with PolicyServer(
        ServeConfig(str(policy_path), host="127.0.0.1", port=0, tls_cert=cert, tls_key=key)
    ).start() as server:
        target = server.address  # 127.0.0.1, which the certificate names: see the mTLS test's note
        with PolicyClient(target, tls_ca=pki["ca"][0]) as client:
            assert client.act(OBS).shape == (2,)
        with PolicyClient(target, timeout_s=2) as plain, pytest.raises(ServiceError) as info:
            plain.act(OBS)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_clients_without_a_certificate_from_the_ca(policy_path, pki):
    """On 127.0.0.1 (the certificate names it), not `localhost`: gRPC binds `localhost` on [::1] and
    127.0.0.1 at one port and keeps [::1] alone when 127.0.0.1 has that port taken, and a refused
    connection is UNAVAILABLE too, so a refusal would pass for the TLS refusals this test looks for."""
    cert, key = pki["server"]
    config = ServeConfig(str(policy_path), host="127.0.0.1", port=0, tls_cert=cert, tls_key=key, client_ca=pki["ca"][0])
    with PolicyServer(config).start() as server:
        target = server.address
        client_cert, client_key = pki["client"]
        with PolicyClient(target, tls_ca=pki["ca"][0], tls_cert=client_cert, tls_key=client_key) as client:
            assert client.act(OBS).shape == (2,)
        rogue_cert, rogue_key = pki["rogue"]
        for kwargs in ({}, {"tls_cert": rogue_cert, "tls_key": rogue_key}):
            with (
                PolicyClient(target, tls_ca=pki["ca"][0], timeout_s=2, **kwargs) as client,
                pytest.raises(ServiceError) as info,
            ):
                client.act(OBS)
            assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_tls_needs_both_cert_and_key(policy_path, pki):
    from flowrl_deploy.errors import FlowRLError

    with pytest.raises(FlowRLError, match="both --tls-cert and --tls-key"):
        PolicyServer(ServeConfig(str(policy_path), port=0, tls_cert=pki["server"][0])).start()


@pytest.mark.parametrize("pair", ["swapped", "mismatched"])
def test_a_certificate_and_a_key_that_do_not_belong_together_are_named(policy_path, pki, pair):
    from flowrl_deploy.errors import FlowRLError

    cert, key = pki["server"]
    cert, key = (key, cert) if pair == "swapped" else (cert, pki["client"][1])
    with pytest.raises(FlowRLError, match="are not a certificate and its private key"):
        PolicyServer(ServeConfig(str(policy_path), port=0, tls_cert=cert, tls_key=key)).start()


NOT_A_CA = (b"not a certificate\n", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


@pytest.mark.parametrize("content", NOT_A_CA)
def test_a_client_ca_that_holds_no_certificate_is_named_not_blamed_on_the_port(policy_path, pki, tmp_path, content):
    from flowrl_deploy.errors import FlowRLError

    cert, key = pki["server"]
    bad_ca = tmp_path / "ca.pem"
    bad_ca.write_bytes(content)
    config = ServeConfig(str(policy_path), host="127.0.0.1", port=0, tls_cert=cert, tls_key=key, client_ca=str(bad_ca))
    with pytest.raises(FlowRLError, match=f"--client-ca {bad_ca}") as info:
        PolicyServer(config).start()
    assert "bind" not in str(info.value) and "listen" not in str(info.value)


def test_control_calls_are_answered_while_the_fleet_holds_every_worker(policy_path):
    """With every --workers thread held by a robot's StreamAct, GetSpec, GetStats and Reload were
    refused (RESOURCE_EXHAUSTED "all --workers … busy"): the operator could neither see the stats nor
    reload a fix, a robot starting then failed in client.session(), which asks GetSpec first, and
    no robot could reset an episode. They have threads of their own beyond --workers."""
    config = ServeConfig(str(policy_path), port=0, workers=2, grace_s=0)
    held = threading.Event()

    def held_open(request):
        yield request
        held.wait(30)

    with PolicyServer(config).start() as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.PolicyServiceStub(channel)
        try:
            streams = [stub.StreamAct(held_open(pb.StreamActRequest(obs=encode(OBS))), timeout=30) for _ in range(2)]
            assert all(not next(stream).HasField("status") for stream in streams)  # both workers held
            assert stub.GetSpec(pb.GetSpecRequest(), timeout=10).obs_dim == OBS.size
            assert stub.GetStats(pb.GetStatsRequest(), timeout=10).sessions == 2
            served = server.servicer.model.version
            assert stub.Reload(pb.ReloadRequest(), timeout=30).model_version == served
            assert stub.Reset(pb.ResetRequest(session_id="robot", seed=1), timeout=10).model_version == served
            with pytest.raises(grpc.RpcError) as refused:  # the robots' own calls wait for a worker
                stub.Act(pb.ActRequest(obs=encode(OBS)), timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            held.set()


def test_control_calls_beyond_their_own_threads_use_idle_workers():
    """A burst of robots starting at once (each asks GetSpec) is not refused while workers are idle:
    control calls beyond their own threads take an idle worker, and only then are refused."""
    refusals = []
    streams = OpenStreams(workers=1, on_refused=lambda method, cap: refusals.append((method, cap.limit)))

    def call(method: str):
        handler = streams.intercept_service(
            lambda _: grpc.unary_unary_rpc_method_handler(lambda r, c: "answered"),
            SimpleNamespace(method=f"/{SERVICE_NAME}/{method}"),
        )
        context = CallContext()
        try:
            return handler.stream_unary(iter(["request"]), context), context
        except grpc.RpcError:
            return "refused", context

    held = [call("GetSpec") for _ in range(CONTROL_CALLS + 1)]  # the last takes the one worker
    assert [answer for answer, _ in held] == ["answered"] * (CONTROL_CALLS + 1)
    assert call("GetStats")[0] == call("Act")[0] == "refused"
    held[0][1].end()  # a control thread is free again: a control call is answered, an Act is not
    assert call("Act")[0] == "refused"
    assert call("Reload")[0] == "answered"
    held[-1][1].end()  # the worker is free again
    assert call("Act")[0] == "answered"
    assert refusals == [("GetStats", "control"), ("Act", "workers"), ("Act", "workers")]
