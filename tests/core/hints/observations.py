"""A robot team's typed code: observations as docs/client.md gives them (plain lists, such as a ROS
message's ``data``, and arrays of any real dtype), actions as the float32 arrays they are."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from flowrl_deploy.client import PolicyClient
from flowrl_deploy.runtime import OnnxPolicy, SeededPolicy
from flowrl_deploy.session import ControlSession

Action = npt.NDArray[np.float32]


def read_sensors() -> list[float]:
    return [0.1, 0.2, 0.3, 0.4, 0.5]


def served(client: PolicyClient) -> tuple[Action, Action, Action, Action]:
    one: Action = client.act(read_sensors())
    batch: Action = client.act(np.zeros((4, 5)))
    print(client.act_reply([0, 1, 2, 3, 4]).inference_us)
    return one, batch, client.spec().action_low, client.spec().action_high


def control(session: ControlSession) -> Action:
    action: Action = session.act(read_sensors())
    action *= 0.5
    held: Action | None = session.last_action
    session.reset(1, initial_action=read_sensors())  # a robot re-homed between episodes: the clamp's reference
    session.reset(2, initial_action=None)  # or none: the episode's first action unclamped
    session.reset(3)
    return action if held is None else held


def local() -> list[Action]:
    policy = OnnxPolicy("policy.onnx")
    seeded = SeededPolicy(policy, seed=7)
    return [
        policy.act(read_sensors(), [0.0]),
        policy.act(np.zeros((2, 5), np.float64)),
        seeded.act(read_sensors()),
        seeded(read_sensors()),
    ]
