"""HTTP/2 keepalive: a frozen client's stream is ended, a client's own keepalive pings are welcome."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from tiny_policy import OBS_DIM, write_policy

from flowrl_deploy.client import CHANNEL_OPTIONS
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.proto.flowrl.v1 import policy_pb2_grpc as pb_grpc
from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.serve.connections import MIN_CLIENT_PING_S

FROZEN_ROBOT = """
import sys, threading
import grpc, numpy as np
from flowrl_deploy.codec import encode
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb, policy_pb2_grpc as pb_grpc
held = threading.Event()
def requests():
    yield pb.StreamActRequest(session_id="robot-7", obs=encode(np.zeros({obs_dim}, np.float32)))
    held.wait(600)
channel = grpc.insecure_channel(sys.argv[1])
replies = pb_grpc.PolicyServiceStub(channel).StreamAct(requests())
next(replies)
print("streaming", flush=True)
held.wait(600)
"""


def test_a_frozen_client_loses_its_session_once_it_stops_answering_pings(tmp_path):
    """A robot frozen (SIGSTOP) or cut off (a pulled cable) held its handler thread and its session
    for gRPC's default of 2 h: the robot, rebooted with the same id, was refused RESOURCE_EXHAUSTED.
    The server pings every keepalive_s and drops a connection whose pings go unanswered."""
    path = write_policy(tmp_path / "policy.onnx")
    with PolicyServer(ServeConfig(str(path), port=0, grace_s=0, keepalive_s=1)).start() as server:
        robot = subprocess.Popen(
            [sys.executable, "-c", FROZEN_ROBOT.format(obs_dim=OBS_DIM), server.address],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
        )
        try:
            assert select.select([robot.stdout], [], [], 120)[0], "the robot never started streaming"
            assert robot.stdout.readline() == "streaming\n"
            with grpc.insecure_channel(server.address) as channel:
                stats = pb_grpc.PolicyServiceStub(channel).GetStats
                assert stats(pb.GetStatsRequest(), timeout=30).sessions == 1
                os.kill(robot.pid, signal.SIGSTOP)
                give_up = (
                    time.monotonic() + 45
                )  # pings every 1 s, 1 s to answer: dropped within seconds (60 s without the ping timeout)
                while stats(pb.GetStatsRequest(), timeout=30).sessions and time.monotonic() < give_up:
                    time.sleep(0.2)
                assert stats(pb.GetStatsRequest(), timeout=30).sessions == 0
        finally:
            robot.kill()  # SIGKILL ends a stopped process too
            robot.wait(30)
            robot.stdout.close()


def test_a_client_pinging_without_calls_is_not_sent_away(tmp_path):
    """gRPC servers answer a client that pings more often than every 5 minutes without calls with
    GOAWAY too_many_pings, dropping its connection; flowrl's client pings every 10 s to find a dead
    server. The server takes pings every MIN_CLIENT_PING_S, with calls or without."""
    assert dict(CHANNEL_OPTIONS)["grpc.keepalive_time_ms"] >= MIN_CLIENT_PING_S * 1000  # flowrl's own client
    path = write_policy(tmp_path / "policy.onnx")
    options = [
        ("grpc.keepalive_time_ms", int((MIN_CLIENT_PING_S + 1) * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    changes = []
    server = PolicyServer(ServeConfig(str(path), port=0, grace_s=0))
    with server.start(), grpc.insecure_channel(server.address, options=options) as channel:
        pb_grpc.PolicyServiceStub(channel).GetSpec(pb.GetSpecRequest(), timeout=30)
        connected = threading.Event()
        channel.subscribe(lambda state: (changes.append(state), connected.set()))
        connected.wait(30)
        time.sleep(3.5 * (MIN_CLIENT_PING_S + 1))  # 3 pings: gRPC's default sent the 3rd away
        pb_grpc.PolicyServiceStub(channel).GetSpec(pb.GetSpecRequest(), timeout=30)
    assert changes == [grpc.ChannelConnectivity.READY]  # never dropped, never reconnected


@pytest.mark.parametrize("keepalive", [0, -1, float("nan"), float("inf"), 1e9])
def test_a_keepalive_interval_the_server_cannot_use_is_refused(tmp_path, keepalive):
    with pytest.raises(FlowRLError, match="keepalive_s must lie in"):
        ServeConfig(str(tmp_path / "policy.onnx"), keepalive_s=keepalive)
