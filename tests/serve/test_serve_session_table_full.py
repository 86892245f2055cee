"""A full session table makes room by forgetting the least recently used session that no stream owns
(one Reset opened): a few seconds of Reset calls by one token holder held all --max-sessions slots for
--session-idle-s (600 s), and every robot's new stream was refused meanwhile."""

from __future__ import annotations

import logging

import grpc
import numpy as np
import pytest
from tiny_policy import write_policy

from flowrl_deploy.client import PolicyClient, ServiceError
from flowrl_deploy.serve import PolicyServer, ServeConfig

OBS = np.array([0.3, -0.2, 0.1], np.float32)


@pytest.fixture
def server(tmp_path):
    config = ServeConfig(str(write_policy(tmp_path / "policy.onnx")), port=0, grace_s=0, max_sessions=4)
    with PolicyServer(config).start() as server:
        yield server


def test_a_table_full_of_reset_sessions_still_opens_a_robots_stream(server, caplog):
    with PolicyClient(server.address) as client:
        for i in range(4):
            client.reset(f"flood-{i}", seed=i)
        client.act(OBS, session_id="flood-0")  # the oldest, used since: flood-1 is the least recently used
        with caplog.at_level(logging.WARNING, logger="flowrl.serve"), client.session(period_s=0.5, seed=1) as robot:
            robot.act(OBS)
            assert robot.timings[-1].source == "server", robot.timings[-1]
            client.reset("flood-4", seed=4)  # a Reset makes room the same way
        for gone in ("flood-1", "flood-2"):  # the robot's stream took flood-1's place, flood-4 flood-2's
            with pytest.raises(ServiceError) as forgotten:
                client.act(OBS, session_id=gone)
            assert forgotten.value.code == grpc.StatusCode.NOT_FOUND
        for kept in ("flood-0", "flood-3", "flood-4"):
            client.act(OBS, session_id=kept)
    assert "\nflowrl_sessions_evicted_total 2\n" in server.servicer.metrics.exposition()  # each one, though warned once
    warnings = [r.getMessage() for r in caplog.records if "session table full" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once a minute, not once per eviction
    assert warnings[0].startswith("session table full (--max-sessions 4): forgot session flood-1, opened by Reset")


def test_sessions_owned_by_streams_are_never_forgotten_for_another(server):
    with PolicyClient(server.address) as client:
        robots = [client.session(period_s=0.5, seed=i) for i in range(4)]
        try:
            for robot in robots:
                robot.act(OBS)
            with pytest.raises(ServiceError) as refused:
                client.reset("late", seed=0)
            assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "session limit of 4 reached" in refused.value.details
            assert "\nflowrl_sessions_evicted_total 0\n" in server.servicer.metrics.exposition()
        finally:
            for robot in robots:
                robot.close()
