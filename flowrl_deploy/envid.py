"""Parsing of environment ids, shared by training, evaluation and the control loop.

Two forms name a task:

- ``dmc:<domain>-<task>`` for dm_control's suite, e.g. ``dmc:dog-run``, ``dmc:cartpole-swingup``;
- ``gym:<id>`` or a bare gymnasium id with a version suffix, e.g. ``h1-walk-v0`` (HumanoidBench).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
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


def parse_env_id(text: str, known: Iterable[str] = ()) -> EnvId:
    """Parse ``text`` into an :class:`EnvId`, or raise :class:`EnvIdError` saying how to name tasks, and
    which of the ``known`` ids (dm_control's tasks, which this module cannot list: the robot side has no
    dm_control) ``text`` most likely misspells, if any."""
    text = text.strip()
    if text.startswith("dmc:"):
        domain, sep, task = text[len("dmc:") :].partition("-")
        if not (sep and domain and task):
            raise EnvIdError(f"cannot parse env id {text!r}{did_you_mean(text, known)}: {ENV_ID_HELP}")
        return EnvId(kind="dmc", name=text, domain=domain, task=task)
    name = text[len("gym:") :] if text.startswith("gym:") else text
    if _GYM_ID.match(name):
        return EnvId(kind="gym", name=name)
    raise EnvIdError(f"cannot parse env id {text!r}{did_you_mean(text, known)}: {ENV_ID_HELP}")


def _loose(env_id: str) -> str:
    """``env_id`` as compared for a suggestion: case-folded, without ``dmc:``, each '_' read as '-'."""
    return env_id.strip().casefold().removeprefix("dmc:").replace("_", "-")


def closest_env_id(text: str, known: Iterable[str]) -> str | None:
    """The id among ``known`` that ``text`` most likely means: the one it equals but for case, '_' or '-'
    and a missing ``dmc:`` (``cartpole_Swingup`` → ``dmc:cartpole-swingup``), else the closest spelling
    (``dmc:cartpol-swingup``); None when ``text`` is one of them or is like none."""
    by_loose: dict[str, str] = {}
    for env_id in known:
        by_loose.setdefault(_loose(env_id), env_id)
    if text.strip() in by_loose.values() or not (loose := _loose(text)):
        return None
    if loose in by_loose:
        return by_loose[loose]
    close = difflib.get_close_matches(loose, by_loose, n=1, cutoff=0.8)
    return by_loose[close[0]] if close else None


def did_you_mean(text: str, known: Iterable[str]) -> str:
    """`` (did you mean <id>?)`` for the id among ``known`` that ``text`` most likely means, or ''."""
    meant = closest_env_id(text, known)
    return f" (did you mean {meant}?)" if meant else ""
