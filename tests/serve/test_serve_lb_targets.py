"""gRPC's naming schemes as client targets (a headless Service's ``dns:///svc:port``, a list of
replicas ``ipv4:a:p,b:p``) and a load-balancing policy: they were refused with 'more than one ':'
(an IPv6 address goes in brackets)', and the channel had no way to take round_robin."""

from __future__ import annotations

import itertools
import time

import grpc
import numpy as np
import pytest
from tiny_policy import OBS_DIM, write_policy

from flowrl_deploy.client import PolicyClient, ServiceError
from flowrl_deploy.connection import checked_target
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.serve import PolicyServer, ServeConfig


@pytest.mark.parametrize(
    "target",
    [
        "dns:///localhost:50051",
        "dns://10.96.0.10:53/flowrl.robots.svc.cluster.local:50051",  # a DNS server of one's own
        "dns://[fd00::a]:53/flowrl:50051",
        "dns:flowrl:50051",
        "ipv4:127.0.0.1:50051",
        "ipv4:10.0.0.2:50051,10.0.0.3:50051",
        "ipv6:[::1]:50051,[fe80::1]:50052",
        "unix:/run/flowrl.sock",
        "unix:///run/flowrl.sock",
        "unix-abstract:flowrl",
    ],
)
def test_grpc_naming_schemes_are_accepted(target):
    assert checked_target(target, "--server") == target


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("dns:///flowrl", "no port"),  # gRPC would take 443
        ("dns://10.96.0.10:53/", "no host:port after 'dns://10.96.0.10:53/'"),
        ("dns:", "no host:port after 'dns:'"),
        # gRPC: 'INTERNAL: Illegal status code from resolver; … Cannot parse authority'
        ("dns://bad server!:53/localhost:50051", "the DNS server 'bad server!:53': 'bad server!' is not a host name"),
        ("dns://10.96.0.10/localhost:50051", "the DNS server '10.96.0.10': no port (give its IP address and port"),
        ("dns://[fd00::a]/localhost:50051", "the DNS server '[fd00::a]': no ':port' after the bracketed IPv6"),
        ("dns://kube-dns:53/localhost:50051", "the DNS server 'kube-dns:53': 'kube-dns' is not an IP address"),
        ("dns://8.8.8.8:0/localhost:50051", "the DNS server '8.8.8.8:0': port 0 is not in 1-65535"),
        ("dns://::1/localhost:50051", "the DNS server '::1': more than one ':' (an IPv6 address goes in brackets)"),
        ("dns:///a:50051,b:50051", "dns: takes one host:port, not a list (ipv4: and ipv6: take lists)"),
        ("ipv4:127.0.0.1", "no port"),
        ("ipv4:127.0.0.1:50051,", "an empty address in the list"),
        ("ipv4:flowrl:50051", "'flowrl' is not an IPv4 address"),
        ("ipv4:10.0.0.2:0", "port 0 is not in 1-65535"),
        ("ipv6:::1:50051", "an IPv6 address goes in brackets"),
        ("ipv6:[10.0.0.2]:50051", "'10.0.0.2' in brackets is not an IPv6 address"),
        ("unix-abstract:", "no name after 'unix-abstract:'"),
        ("localhost:50051:1", "more than one ':'"),  # plain host:port keeps its checks
    ],
)
def test_a_bad_address_in_a_scheme_is_named(target, why):
    with pytest.raises(FlowRLError, match="--server") as caught:
        checked_target(target, "--server")
    assert why in str(caught.value)


def test_an_unknown_load_balancing_policy_is_refused_naming_the_choices():
    with pytest.raises(FlowRLError, match="lb_policy 'least_loaded': one of pick_first, round_robin"):
        PolicyClient("localhost:50051", lb_policy="least_loaded")


@pytest.fixture
def two_servers(tmp_path):
    """Two replicas of one contract whose files differ (so their model_version says which answered)."""
    servers = [
        PolicyServer(ServeConfig(str(write_policy(tmp_path / f"{i}.onnx", scale=1 + i)), port=0, grace_s=0)).start()
        for i in range(2)
    ]
    yield servers
    for server in servers:
        server.stop()


def _versions(client: PolicyClient, calls: int) -> list[str]:
    obs = np.zeros(OBS_DIM, np.float32)
    return [client.act_reply(obs, timeout_s=5).model_version for _ in range(calls)]


def test_round_robin_over_an_ipv4_list_reaches_both_replicas_and_fails_over(two_servers):
    first, second = two_servers
    versions = {server.servicer.model.version for server in two_servers}
    assert len(versions) == 2
    target = f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}"
    with PolicyClient(target, lb_policy="round_robin", timeout_s=5) as client:
        client.wait_ready(10)  # one replica READY: round_robin picks among the READY ones only
        seen: set[str] = set()
        until = time.monotonic() + 10
        while seen != versions and time.monotonic() < until:
            seen.update(_versions(client, 1))
        assert seen == versions  # pick_first would send every call to one
        calls = _versions(client, 10)
        assert all(a != b for a, b in itertools.pairwise(calls)), calls  # both READY: in turn
        first.stop()
        served: list[str] = []
        until = time.monotonic() + 10
        while len(served) < 20 and time.monotonic() < until:
            try:
                served += _versions(client, 1)
            except ServiceError as exc:  # a call that met the stop; the next goes to the other replica
                assert exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), exc
        assert served[-10:] == [second.servicer.model.version] * 10


def test_pick_first_over_an_ipv4_list_fails_over_to_the_next_address(two_servers):
    first, second = two_servers
    with PolicyClient(f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}", timeout_s=5) as client:
        client.wait_ready(10)
        assert set(_versions(client, 5)) == {first.servicer.model.version}
        first.stop()
        until = time.monotonic() + 10
        while time.monotonic() < until:
            try:
                if _versions(client, 1) == [second.servicer.model.version]:
                    break
            except ServiceError:
                time.sleep(0.05)
        assert _versions(client, 5) == [second.servicer.model.version] * 5
