"""Parsing of environment ids, shared by training, evaluation and the control loop.

Two forms name a task:

- ``dmc:<domain>-<task>`` for dm_control's suite, e.g. ``dmc:dog-run``, ``dmc:cartpole-swingup``;
- ``gym:<id>`` or a bare gymnasium id with a version suffix, e.g. ``h1-walk-v0`` (HumanoidBench).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flowrl_deploy.errors import EnvIdError

ENV_ID_HELP = (
    "name a task as 'dmc:<domain>-<task>' for dm_control (e.g. dmc:cartpole-swingup, dmc:dog-run) "
    "or as a gymnasium id such as 'h1-walk-v0' (HumanoidBench, optional) or 'gym:Pendulum-v1'"
)
_GYM_ID = re.compile(r"^[A-Za-z0-9_./:-]+-v\d+$")


@dataclass(frozen=True)
class EnvId:
    """A parsed environment id: ``kind`` is ``"dmc"`` or ``"gym"``."""

    kind: str
    name: str
    domain: str = ""
    task: str = ""

    def __str__(self) -> str:
        return f"dmc:{self.domain}-{self.task}" if self.kind == "dmc" else self.name


def parse_env_id(text: str) -> EnvId:
    """Parse ``text`` into an :class:`EnvId`, or raise :class:`EnvIdError` saying how to name tasks."""
    text = text.strip()
    if text.startswith("dmc:"):
        domain, sep, task = text[len("dmc:") :].partition("-")
        if not (sep and domain and task):
            raise EnvIdError(f"cannot parse env id {text!r}: {ENV_ID_HELP}")
        return EnvId(kind="dmc", name=text, domain=domain, task=task)
    name = text[len("gym:") :] if text.startswith("gym:") else text
    if _GYM_ID.match(name):
        return EnvId(kind="gym", name=name)
    raise EnvIdError(f"cannot parse env id {text!r}: {ENV_ID_HELP}")
