"""Typed code passing what the client runs with: ``pathlib.Path`` files (TLS, the local fallback's
model) and numpy integer seeds (such as a ``Generator.integers`` draw)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowrl_deploy.client import PolicyClient, channel_credentials
from flowrl_deploy.runtime import SeededPolicy
from flowrl_deploy.session import ControlSession, check_session_settings


def connect(certs: Path) -> PolicyClient:
    channel_credentials(certs / "ca.pem")
    return PolicyClient("robot:50051", tls_ca=certs / "ca.pem", tls_cert=certs / "c.pem", tls_key=certs / "c.key")


def episodes(client: PolicyClient, model: Path, rng: np.random.Generator) -> None:
    seed = rng.integers(0, 2**32)
    check_session_settings(fallback="local", local_model=model, max_consecutive_misses=None, deadline_s=None)
    with client.session(period_s=0.02, fallback="local", local_model=model, seed=seed) as session:
        session.reset(np.uint64(7))
    ControlSession(client, period_s=0.02, fallback="local", local_model=model, seed=np.int32(1)).close()
    client.act([0.0] * 5, seed=seed)
    client.act_reply([0.0] * 5, seed=np.uint64(2**64 - 1))
    client.reset("episode-1", np.int64(3))
    SeededPolicy(model, seed=seed).reseed(np.uint8(2))
