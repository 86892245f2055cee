"""Mistakes the hints exist to catch: mypy --strict must report each line that ends in an ``error:``
comment with the code it names, and nothing else (a hint gone ``Any`` lets its mistake through)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

import flowrl_deploy.train
from flowrl_deploy import client, runtime, session
from flowrl_deploy.client import PolicyClient
from flowrl_deploy.proto.flowrl.v1.policy_pb2 import GetSpecRequest
from flowrl_deploy.proto.flowrl.v1.policy_pb2_grpc import PolicyServiceStub, add_PolicyServiceServicer_to_server
from flowrl_deploy.runtime import OnnxPolicy
from flowrl_deploy.serve import ServeConfig, metrics
from flowrl_deploy.session import ControlSession
from flowrl_deploy.tls import check_key_pair, read_certificates
from flowrl_deploy.train import TrainConfig, TrainResult, checkpointing, load_actor


def training(result: TrainResult) -> None:
    TrainConfig(stepz=40_000)  # error: [call-arg]
    TrainConfig(hidden="256")  # error: [arg-type]
    load_actor(result.last_checkpoint)  # error: [arg-type]
    print(result.last_checkpont)  # error: [attr-defined]


def actions(client: PolicyClient, session: ControlSession, sensors: list[float] | None) -> None:
    wide: npt.NDArray[np.float64] = client.act([0.1])  # error: [assignment]
    wide = session.act(np.zeros(5))  # error: [assignment]
    session.act(sensors)  # error: [arg-type]
    print(wide)


def settings(session: ControlSession) -> float:
    session.deadline_s = 0.01  # written after the session is made, checked then
    session.max_delta = 0.05  # the slew limit, as deadline_s (None: no clamp)
    session.max_delta = "0.05"  # error: [assignment]
    session.last_action = None  # error: [assignment]
    session.reset(1, 0.0)  # error: [call-arg]
    session.period_s = 0.01  # error: [assignment]
    session.fallback = "zeros"  # error: [assignment]
    session.seed = 3  # error: [assignment]
    session.max_rate = 2.0  # error: [attr-defined]
    session.dealine_s = 0.01  # error: [attr-defined]
    return session.period_s + (session.max_delta or 0.0)


def graph(policy: OnnxPolicy) -> None:
    sizes: list[int] = policy.input_names  # error: [assignment]
    print(sizes, policy.output_name + 1)  # error: [operator]


def raw_stub(client: PolicyClient) -> None:
    PolicyServiceStub(client.channel).GetSpecs(GetSpecRequest())  # error: [attr-defined]
    add_PolicyServiceServicer_to_server(PolicyServiceStub(client.channel), client.channel)  # error: [arg-type]


def serving(model: Path) -> ServeConfig:
    return ServeConfig(model)  # error: [arg-type]


def tls_files(certs: Path) -> bytes:
    check_key_pair(certs / "robot.pem", certs / "robot.key")  # paths, as PolicyClient's tls_cert and tls_key
    return read_certificates(certs / "ca.pem", flag=2)  # error: [arg-type]


def misspelt_names() -> None:
    """Modules that give moved (or lazily loaded) names through a module ``__getattr__`` still let mypy see a
    typo: such a ``__getattr__`` makes every name valid to a type checker that reads it. (Core's noise.py
    keeps its own visible: it names the server's Session for no type checker, so a robot's is not led into serve/.)"""
    print(client.ControlSesion)  # error: [attr-defined]
    print(runtime.OnnxPolicyy)  # error: [attr-defined]
    print(session.MIN_HERTZ)  # error: [attr-defined]
    print(checkpointing.load_checkpont)  # error: [attr-defined]
    print(metrics.start_metric_http)  # error: [attr-defined]
    print(flowrl_deploy.train.TrainConfg)  # error: [attr-defined]
    print(client.ControlSession, runtime.OnnxPolicy, session.MIN_HZ, metrics.start_metrics_http)
