"""The checks of a control session's settings (no torch), refused before any connection: the ones
:class:`~flowrl_deploy.session.ControlSession` makes, and those ``flowrl control`` shares
(:func:`check_session_settings`, :func:`session_deadline`), naming each setting as its user wrote it."""

from __future__ import annotations

import math
import os

from flowrl_deploy.connection import is_flag
from flowrl_deploy.contract import MAX_CONTROL_PERIOD_S, MAX_HZ, MIN_CONTROL_PERIOD_S, MIN_HZ
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.fieldtypes import is_integer, is_number, shown

FALLBACKS = ("hold", "zeros", "local")
"""What a :class:`~flowrl_deploy.session.ControlSession` applies when no fresh action arrives in time:
the last action, zeros, or a local ONNX copy of the policy."""


def checked_positive(value: object, name: str) -> float:
    """``value`` as a float when it is a finite number > 0; else a :class:`FlowRLError` naming ``name``
    (NaN would pass every ``<`` check and turn a clamp or the watchdog off)."""
    if not (is_number(value) and math.isfinite(value) and value > 0):
        raise FlowRLError(f"{name} must be a finite number > 0, got {shown(value)}")
    return float(value)


SESSION_ARGUMENTS = {name: name for name in ("deadline_s", "fallback", "local_model", "max_consecutive_misses")}
"""How errors name a :class:`~flowrl_deploy.session.ControlSession`'s settings: by its own arguments. A
command passes its flags instead (``flowrl control``: ``--fallback``, ``--deadline-ms`` and so on)."""


def _setting(name: str, value: object) -> str:
    """``name`` set to ``value`` as its user writes it: ``--fallback local`` or ``fallback='local'``."""
    return f"{name} {value}" if is_flag(name) else f"{name}={value!r}"


def _duration(name: str, seconds: object) -> str:
    """``seconds`` in the unit ``name`` is given in: ms for a flag such as ``--deadline-ms``, else seconds."""
    return shown(seconds * 1e3 if name.endswith("-ms") and is_number(seconds) else seconds)


def check_session_settings(
    *,
    fallback: str,
    local_model: str | os.PathLike[str],
    max_consecutive_misses: int | None,
    deadline_s: float | None,
    names: dict[str, str] = SESSION_ARGUMENTS,
) -> None:
    """Refuse :class:`~flowrl_deploy.session.ControlSession` settings that cannot work, before any
    connection: an unknown fallback, a local fallback without its model (or a model without it), a miss
    limit below 1, a deadline that is no finite number > 0. Errors name each setting as ``names`` maps
    it (keys as :data:`SESSION_ARGUMENTS`)."""
    fb, model, misses, deadline = (
        names[k] for k in ("fallback", "local_model", "max_consecutive_misses", "deadline_s")
    )
    if fallback not in FALLBACKS:
        raise FlowRLError(f"{fb} must be {', '.join(FALLBACKS[:-1])} or {FALLBACKS[-1]}, got {fallback!r}")
    if fallback == "local" and not local_model:
        raise FlowRLError(f"{_setting(fb, 'local')} needs {model} (the ONNX file the server serves)")
    if local_model and fallback != "local":
        raise FlowRLError(
            f"{model} is used only with {_setting(fb, 'local')} ({fb} is {fallback!r}); "
            f"add {_setting(fb, 'local')}, or drop {model}"
        )
    check_max_misses(max_consecutive_misses, misses)
    check_deadline(deadline_s, deadline)


def check_max_misses(max_consecutive_misses: object, name: str = "max_consecutive_misses") -> None:
    """Refuse a miss limit that is neither an integer >= 1 nor None (never), naming it ``name``."""
    if max_consecutive_misses is not None and not (is_integer(max_consecutive_misses) and max_consecutive_misses >= 1):
        unset = "" if is_flag(name) else " or None"
        raise FlowRLError(f"{name} must be an integer >= 1{unset}, got {shown(max_consecutive_misses)}")


def check_deadline(deadline_s: object, name: str = "deadline_s") -> None:
    """Refuse a deadline that is neither a finite number > 0 nor None (half the period), naming it ``name``."""
    if deadline_s is not None and not (is_number(deadline_s) and math.isfinite(deadline_s) and deadline_s > 0):
        raise FlowRLError(f"{name} must be a finite number > 0, got {_duration(name, deadline_s)}")


def session_deadline(period_s: float, deadline_s: float | None, name: str = "deadline_s") -> float:
    """A tick's deadline: ``deadline_s`` (checked by :func:`check_session_settings`) or half the
    period; a deadline longer than the period is refused, naming it ``name``."""
    if deadline_s is None:
        return period_s / 2
    if deadline_s > period_s:
        raise FlowRLError(
            f"{name} {_duration(name, deadline_s)} is longer than the control period, {period_s * 1e3:g} ms at "
            f"{1 / period_s:g} Hz: a tick would wait past the next one; give at most the period"
        )
    return float(deadline_s)


def check_period(period_s: object) -> None:
    """Refuse a control period outside [1e-4, 10] s (0.1 Hz to 10 kHz, as ``flowrl control --hz``)."""
    if not (is_number(period_s) and MIN_CONTROL_PERIOD_S <= period_s <= MAX_CONTROL_PERIOD_S):
        raise FlowRLError(
            f"period_s must lie in [{MIN_CONTROL_PERIOD_S:g}, {MAX_CONTROL_PERIOD_S:g}] s (a control rate "
            f"of {MIN_HZ:g} to {MAX_HZ:g} Hz), got {shown(period_s)}"
        )


def check_max_timings(max_timings: object) -> None:
    """Refuse a ``max_timings`` that is neither an integer >= 1 nor None (keep them all)."""
    if max_timings is not None and not (is_integer(max_timings) and max_timings >= 1):
        raise FlowRLError(f"max_timings must be an integer >= 1 or None (all), got {shown(max_timings)}")


def checked_backoff(backoff_s: object) -> tuple[float, float]:
    """``backoff_s`` as (first, longest) floats: two finite numbers of seconds, 0 < first <= longest."""
    if not (isinstance(backoff_s, (tuple, list)) and len(backoff_s) == 2 and all(map(is_number, backoff_s))):
        raise FlowRLError(f"backoff_s must be two numbers of seconds (first, longest), got {backoff_s!r}")
    first, longest = (checked_positive(b, "backoff_s") for b in backoff_s)
    if first > longest:
        raise FlowRLError(f"backoff_s must have first <= longest, got ({first:g}, {longest:g})")
    return first, longest
