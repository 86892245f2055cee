"""The thread pool (and gRPC's limit of calls in flight) is ``--workers`` + SPARE_THREADS: one thread
for every call the caps let in. With every cap full but one health Check in flight (a readiness probe
held), a liveness probe is still answered: a pool one cap short refused it with gRPC's "Concurrent RPC
limit exceeded!", and the kubelet restarted a healthy server."""

from __future__ import annotations

import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from flowrl_deploy.serve import PolicyServer, ServeConfig, interceptors
from flowrl_deploy.serve.interceptors import (
    CONTROL_CALLS,
    HEALTH_CHECKS,
    REFLECTION_STREAMS,
    SERVICE_NAME,
    WATCH_STREAMS,
)


def test_with_every_cap_full_and_a_probe_in_flight_another_probe_is_answered(policy_path, hold, monkeypatch):
    monkeypatch.setattr(interceptors, "HEALTH_MESSAGE_S", 60.0)  # the held Check stays for the test
    config = ServeConfig(str(policy_path), port=0, workers=1, grace_s=0)
    with PolicyServer(config).start() as server, grpc.insecure_channel(server.address) as channel:
        calls = [hold(channel, f"/{SERVICE_NAME}/StreamAct") for _ in range(config.workers)]
        calls += [hold(channel, f"/{SERVICE_NAME}/GetSpec") for _ in range(CONTROL_CALLS)]
        calls += [hold(channel, f"/{reflection.SERVICE_NAME}/ServerReflectionInfo") for _ in range(REFLECTION_STREAMS)]
        calls.append(hold(channel, "/grpc.health.v1.Health/Check"))  # a readiness probe, its message to come
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=60) for _ in range(WATCH_STREAMS)]
        try:
            assert [next(watch).status for watch in watches] == [health_pb2.HealthCheckResponse.SERVING] * WATCH_STREAMS
            expected = {
                "workers": (config.workers, config.workers),
                "control": (CONTROL_CALLS, CONTROL_CALLS),
                "watch": (WATCH_STREAMS, WATCH_STREAMS),
                "reflection": (REFLECTION_STREAMS, REFLECTION_STREAMS),
                "health": (1, HEALTH_CHECKS),
            }
            for _ in range(600):  # the held calls reach their handlers (a thread start took up to 1 s when loaded)
                if server._streams.usage() == expected:
                    break
                threading.Event().wait(0.05)
            assert server._streams.usage() == expected
            assert not [call for call in calls if call.done()]  # none refused
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)  # a liveness probe
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            for watch in watches:
                watch.cancel()
