"""The control loop's session (no torch): :class:`ControlSession`, one ``StreamAct`` stream with a
deadline per tick, fallbacks and a watchdog (:class:`WatchdogError`); and the checks of its settings,
which ``flowrl control`` shares (:func:`check_session_settings`, :func:`session_deadline`).

with PolicyClient("localhost:50051") as client, client.session(period_s=0.02, seed=0, fallback="hold") as control:
    action = control.act(obs)                  # every control tick; waits at most the deadline, then falls back

Its warnings go to the logger ``flowrl.client``, the client library's. :class:`ControlSession` is the
façade of its parts, each in a module of its own: the stream, its reconnection and the exchange of a
tick (:mod:`flowrl_deploy.session_stream`), the fallback actions and the local fallback's noise
(:mod:`flowrl_deploy.session_fallback`), and the checks of its settings
(:mod:`flowrl_deploy.session_settings`); here are the tick, the watchdog, the rate clamp, the records of
each tick (:class:`CallTiming`, ``health``), reset and close.
"""

from __future__ import annotations

import collections
import enum
import json
import logging
import math
import os
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, NoReturn, TypeVar, overload

import grpc
import numpy as np
import numpy.typing as npt

from flowrl_deploy.client import (
    ContractMismatchError,
    PolicyClient,
    ServiceError,
    checked_contract_hash,
    pin_mismatch,
)
from flowrl_deploy.codec import TensorError, as_float32, check_finite, decode
from flowrl_deploy.connection import checked_timeout
from flowrl_deploy.contract import MAX_SESSION_ID, PolicyContract
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.exposition import LATENCY_BUCKETS_S, Histogram
from flowrl_deploy.moved import moved_names
from flowrl_deploy.noise import Seed, checked_seed
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.session_fallback import FallbackPolicy
from flowrl_deploy.session_settings import FALLBACKS as FALLBACKS
from flowrl_deploy.session_settings import SESSION_ARGUMENTS as SESSION_ARGUMENTS
from flowrl_deploy.session_settings import (
    check_deadline,
    check_max_misses,
    check_max_timings,
    check_period,
    checked_backoff,
    checked_positive,
)
from flowrl_deploy.session_settings import check_session_settings as check_session_settings
from flowrl_deploy.session_settings import session_deadline as session_deadline
from flowrl_deploy.session_stream import BACKLOG as BACKLOG
from flowrl_deploy.session_stream import CLOSED as CLOSED
from flowrl_deploy.session_stream import DEADLINE as DEADLINE
from flowrl_deploy.session_stream import DISCONNECTED as DISCONNECTED
from flowrl_deploy.session_stream import REFUSED_UNDRAWN as REFUSED_UNDRAWN
from flowrl_deploy.session_stream import SERVER_CLOSED as SERVER_CLOSED
from flowrl_deploy.session_stream import TRANSIENT as TRANSIENT
from flowrl_deploy.session_stream import SessionBusyError as SessionBusyError
from flowrl_deploy.session_stream import SessionClosedError as SessionClosedError
from flowrl_deploy.session_stream import StreamCall, StreamLink, closed_error

if TYPE_CHECKING:
    from flowrl_deploy.policy import OnnxPolicy

log = logging.getLogger("flowrl.client")
PERIOD_MISMATCH = "period_s %g s (%g Hz) differs from the served policy's control period, %g s (%g Hz)"
"""The warning of a session whose period is not the served policy's (a caller that already warned filters it)."""

DEFAULT_MAX_TIMINGS = 100_000
"""How many ticks a :class:`ControlSession` keeps in ``timings`` by default (about 30 MB)."""
DEFAULT_RESET_TIMEOUT_S = 1.0
"""How long :meth:`ControlSession.reset` waits by default: a reset comes between episodes, not in a
tick, and a second rides out a network spike or a garbage-collection pause."""


class WatchdogError(FlowRLError):
    """No fresh action for too long or too many times in a row: the robot should stop."""


@dataclass(frozen=True)
class CallTiming:
    """One control tick, as the client saw it."""

    seq: int
    source: str
    """'server' for a fresh served action, else the fallback used: 'hold', 'zeros' or 'local'."""
    round_trip_us: float
    server_us: float = 0.0
    """Receipt to reply on the server."""
    inference_us: float = 0.0
    clock_offset_us: float = 0.0
    """Server clock minus client clock, NTP-style: ((t1 - t0) + (t2 - t3)) / 2. One tick's figure is
    noisy (hundreds of µs: the client's stamps include its thread hand-offs): use the median of many,
    as ``flowrl control`` reports, or the tick with the shortest round trip."""
    model_version: str = ""
    reason: str = ""
    """Why the tick fell back: '' for a fresh action; 'deadline' (no reply to this tick in time),
    'backlog' (not sent: earlier ticks still unanswered on the stream, a stalled server), 'invalid action'
    (the server's action was not act_dim finite numbers within the bounds: a broken model),
    'disconnected' (no open stream: the server is down or the reconnection backs off), 'closed' (the
    session closed by another thread while the tick waited), or the code name of the server's refusal
    of the tick or stream ('RESOURCE_EXHAUSTED', 'UNAVAILABLE', 'DEADLINE_EXCEEDED' from the server's
    own deadline check, ...)."""


@dataclass
class _Health:
    consecutive_misses: int = 0
    last_fresh: float | None = None
    """When the last fresh action came (time.monotonic); None until the first tick after the
    session opened or reset, whose start then counts as fresh: an idle session never trips."""
    misses: int = 0
    ticks: int = 0
    """Every tick since the session opened (``timings`` keeps only the most recent ones)."""
    last_fallback_reason: str = ""
    """The latest fallback tick's ``CallTiming.reason``; '' until the first fallback (kept after fresh actions)."""
    fallbacks: dict[str, int] = field(default_factory=dict)
    """Fallback ticks since the session opened, by ``CallTiming.reason`` (``timings`` keeps only the recent ticks)."""
    fresh_at: float | None = None
    """When the latest fresh action came (time.monotonic); None before the first. Unlike ``last_fresh``, a
    reset leaves it: it dates the action, not the watchdog's clock."""
    model_version: str = ""
    """The latest fresh action's ``model_version``; the served one when the session opened, until then."""
    round_trips: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_S))
    """The round trips of the fresh ticks since the session opened, in seconds (fallback ticks are in
    ``fallbacks``); :mod:`flowrl_deploy.control_metrics` renders it as a Prometheus histogram."""


WRITABLE_SETTINGS = ("deadline_s", "max_consecutive_misses", "max_staleness_s", "reset_timeout_s", "max_delta")
"""The settings of a :class:`ControlSession` that may be written after it is made, each checked as then."""
_CONSTRUCTOR_ONLY = frozenset({"local_model", "max_rate", "contract", "backoff_s", "max_timings"})
"""The arguments of a :class:`ControlSession` that it keeps under no name of theirs (their effects are
``local``, ``max_delta``, ``contract_hash``/``contract_json``, the reconnection and ``timings``)."""
_T = TypeVar("_T")


class _Keep(enum.Enum):
    """:meth:`ControlSession.reset`'s default ``initial_action``: the rate clamp keeps its reference."""

    LAST_ACTION = "the last action returned"


LAST_ACTION = _Keep.LAST_ACTION


class _Fixed(Generic[_T]):
    """A :class:`ControlSession` setting fixed when the session is made: read as ``_<name>`` (or by
    ``read``); a write raises AttributeError saying why, and to open a new session instead."""

    def __init__(self, doc: str, why: str, read: Callable[[ControlSession], _T] | None = None) -> None:
        self.__doc__ = f"{doc[0].upper()}{doc[1:]} (fixed when the session is made)."
        self.why = why
        self.read = read

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, session: None, owner: type) -> _Fixed[_T]: ...
    @overload
    def __get__(self, session: ControlSession, owner: type) -> _T: ...
    def __get__(self, session: ControlSession | None, owner: type) -> _T | _Fixed[_T]:
        if session is None:
            return self
        return self.read(session) if self.read else getattr(session, f"_{self.name}")

    def __set__(self, session: ControlSession, value: NoReturn) -> None:  # NoReturn: a type checker refuses writes
        raise self._refusal()

    def __delete__(self, session: ControlSession) -> None:
        raise self._refusal()

    def _refusal(self) -> AttributeError:
        return AttributeError(
            f"ControlSession.{self.name} is fixed when the session is made ({self.why}): open a new session "
            "with client.session(...) for another"
        )


def _checked_session_id(session_id: object) -> str:
    """``session_id`` if it is one the server takes, a string of at most MAX_SESSION_ID characters that
    UTF-8 encodes ('' or None: one is made up)."""
    if session_id is None:
        return ""
    if not isinstance(session_id, str):
        raise FlowRLError(f"session_id must be a string, got {type(session_id).__name__} {session_id!r}")
    if len(session_id) > MAX_SESSION_ID:
        raise FlowRLError(f"session_id of {len(session_id)} characters: the server takes at most {MAX_SESSION_ID}")
    try:
        session_id.encode()
    except UnicodeEncodeError as exc:
        raise FlowRLError(f"session_id {session_id!r} is not UTF-8 text: {exc.reason}") from None
    return session_id


class ControlSession:
    """A control loop's connection: one ``StreamAct`` stream, a deadline per tick, fallbacks.

    ``act(obs)`` sends the observation and waits at most ``deadline_s`` for the reply to this
    tick (replies to earlier ticks are dropped by sequence number). Without a fresh action in
    time it returns the fallback: ``hold`` (the last action; before any, the zeros), ``zeros``
    (clipped into the action bounds), or ``local`` (the same ONNX policy run here with onnxruntime;
    pass ``local_model``). Every action returned is the caller's own writable array: editing it
    in place (``a *= 0.5``) never changes what the session holds or returns later.

    The local fallback keeps the file loaded when the session was made: a server ``Reload`` does not
    change it (open a new session after one). It runs on the CPU, GPU or not (a CPU server's actions, to
    the bit where docs/client.md's "Seeded runs" says so), and once on zeros when the session is made,
    so that the first tick falling back does not pay onnxruntime's first-run costs. It draws its noise
    as the server's session does, one block every tick sent, answered in time or not, so a fallback at tick
    t acts on the server's draw for tick t (a tick the server never took, the stream down or refused, leaves the
    server's stream behind the ticks until the tick that opens the session on a reopened stream, which
    restarts both from the seed). Its contract must be the served one (else :class:`FlowRLError`); a
    file other than the served one (its sha256 is not the one in the served ``model_version``) and a
    ``period_s`` other than the served policy's control period are logged as warnings (logger
    ``flowrl.client``), not refused.
    The watchdog raises :class:`WatchdogError` after ``max_consecutive_misses`` misses in a row
    or when the last fresh action is older than ``max_staleness_s`` (counted from the first tick,
    and again after each :meth:`reset`, which does not end the misses in a row). A tick is not sent while
    one sent two ticks before is unanswered (reason ``backlog``): a stalled server then answers the first
    tick after it, not the ticks queued meanwhile. A broken stream is reopened with exponential backoff
    (each wait drawn at random from [half, all] of it, so that robots that lost the same server do
    not retry in step; the server then restarts the session's noise from ``seed``).
    Each fallback tick's ``CallTiming.reason`` says why (also ``health.last_fallback_reason``); a
    change to a server refusal or to ``disconnected`` is logged once as a warning (logger
    ``flowrl.client``), and the first fresh action after it at INFO: not once per tick.

    A session serves one control loop, whose calls may come from any thread, one at a time (a ROS 2
    executor's pool runs each timer callback on any of its threads): ``act`` or ``reset`` called
    while another is running (from a second thread) raises :class:`SessionBusyError`, and either after
    :meth:`close` :class:`SessionClosedError` (both :class:`FlowRLError`).
    Every setting is checked here, each bad one refused with a :class:`FlowRLError` naming it.

    Args:
        period_s: the control period, in [1e-4, 10] s (0.1 Hz to 10 kHz, as ``flowrl control --hz``).
        deadline_s: how long a tick waits for its action, in (0, period_s]; default: half the period.
        session_id: the server session's name; default: a fresh unique one.
        seed: the session's noise seed (an integer in [0, 2**64)); default: unseeded.
        fallback: ``hold``, ``zeros`` or ``local``.
        local_model: the served ONNX file, for ``fallback="local"`` (and only for it).
        max_consecutive_misses: raise after this many (>= 1) misses in a row; None: never.
        max_staleness_s: raise when no fresh action came for this long (finite, > 0); None: never.
        max_rate: a slew limit: each action component (in the action's own units, after rescaling) moves
            at most ``max_rate * period_s`` from the last action returned, in action units per second
            (finite, > 0); None: no limit. Fallback actions are clamped too (``zeros`` ramps down to the
            zeros), and :meth:`reset` keeps the reference unless given another: a new episode starts from
            where the last one left the actuators. The session's first tick has no reference unless
            ``initial_action`` gives one, and is then not clamped. Its step, ``max_delta``, may be
            written after (from the next tick).
        initial_action: the command the actuators hold when the session opens (``act_dim`` finite
            numbers): the first tick's reference for ``max_rate`` (and only for it: ``hold`` before any
            action still holds the zeros); None: the first tick is not clamped.
        contract_hash / contract: pin the policy contract (its 16 hex digit hash, as ``flowrl inspect``
            prints it, any case; or the contract itself, so that a refusal names the fields that differ).
            A pin the server does not serve raises :class:`~flowrl_deploy.client.ContractMismatchError`
            here; a malformed hash, or both given for two contracts, :class:`FlowRLError`. Without
            either, the session pins the contract served when it opens (``info``): a server restarted
            with another interface is refused, ``act`` raising
            :class:`~flowrl_deploy.client.ContractMismatchError`, never followed.
        backoff_s: (first, longest) wait between reconnection tries, 0 < first <= longest; it doubles
            from first to longest, and each wait is drawn from [half, all] of it.
        reset_timeout_s: how long :meth:`reset` waits for the server (finite, > 0); default 1 s.
        max_timings: how many ticks ``timings`` keeps, the most recent (>= 1); None: all of them
            (about 300 bytes a tick: only for bounded runs).
    """

    def __init__(
        self,
        client: PolicyClient,
        *,
        period_s: float,
        deadline_s: float | None = None,
        session_id: str = "",
        seed: Seed | None = None,
        fallback: str = "hold",
        local_model: str | os.PathLike[str] = "",
        max_consecutive_misses: int | None = None,
        max_staleness_s: float | None = None,
        max_rate: float | None = None,
        initial_action: npt.ArrayLike | None = None,
        contract_hash: str | None = "",
        contract: PolicyContract | None = None,
        backoff_s: tuple[float, float] = (0.05, 1.0),
        reset_timeout_s: float | None = None,
        max_timings: int | None = DEFAULT_MAX_TIMINGS,
    ) -> None:
        check_session_settings(
            fallback=fallback,
            local_model=local_model,
            max_consecutive_misses=max_consecutive_misses,
            deadline_s=deadline_s,
        )
        check_period(period_s)
        deadline_s = session_deadline(period_s, deadline_s)
        check_max_timings(max_timings)
        backoff_s = checked_backoff(backoff_s)
        self.client = client
        self._period_s = float(period_s)
        self._deadline_s = deadline_s
        self._session_id = _checked_session_id(session_id) or f"control-{uuid.uuid4().hex[:12]}"
        self._seed = checked_seed(seed)
        self.max_consecutive_misses = max_consecutive_misses
        self.max_staleness_s = max_staleness_s
        self._max_delta = None if max_rate is None else checked_positive(max_rate, "max_rate") * self._period_s
        if initial_action is not None and max_rate is None:
            raise FlowRLError("initial_action is used only with max_rate (it is the rate clamp's first reference)")
        self.reset_timeout_s = reset_timeout_s
        pin = checked_contract_hash(contract_hash)
        if pin and contract is not None and contract.hash() != pin:  # which one is meant? neither is sent
            raise FlowRLError(
                f"contract_hash {pin} is not the hash of the contract given, {contract.hash()}: pin one of them"
            )
        self.info = client.spec()
        if why := pin_mismatch(self.info, pin, contract, client.target):
            raise ContractMismatchError(why)
        self._pinned = bool(pin or contract)
        # The server checks the pin (and names what differs, from the contract) on each stream it opens:
        # a server restarted with another interface is refused, never followed.
        self._contract_hash = pin or (contract.hash() if contract else self.info.contract_hash)
        self._contract_json = json.dumps((contract or self.info.contract).to_dict(), sort_keys=True)
        served_period_s = self.info.control_period_s
        if served_period_s > 0 and not math.isclose(self._period_s, served_period_s, rel_tol=1e-6):
            log.warning(
                PERIOD_MISMATCH,
                self._period_s,
                1 / self._period_s,
                served_period_s,
                1 / served_period_s,
            )
        low, high = self.info.action_low, self.info.action_high
        slack = 1e-5 * (np.abs(low) + np.abs(high) + 1)
        self._bounds_taken = (low - slack, high + slack)
        """The action bounds up to float32 rounding: an exported graph's tanh·scale + bias puts a saturated
        action a few ulps past a bound (-0.30000004 for -0.3)."""
        self._fallback_policy = FallbackPolicy(fallback, local_model, self.seed, self.info)
        self._obs_shapes = ((self.info.obs_dim,), (1, self.info.obs_dim))
        self.timings: collections.deque[CallTiming] = collections.deque(maxlen=max_timings)
        self.health = _Health(model_version=self.info.model_version)
        self._last_action: npt.NDArray[np.float32] | None = None
        self._initial_action = self._reference(initial_action)
        self._clamp_from = self._initial_action
        """The ``max_rate`` clamp's reference: the last action returned, across resets; at first ``initial_action``."""
        self._seq = 0
        self._busy = threading.Lock()
        self._link = StreamLink(client, self, backoff_s, self._fallback_policy)
        self._finalizer = weakref.finalize(self, _dropped, self._link, self._session_id)
        self._finalizer.atexit = False  # a session open when Python exits is not a dropped one

    # --- its settings: those a tick reads are checked when written, as when made; the others are fixed ---
    @property
    def deadline_s(self) -> float:
        """How long a tick waits for its action. Writable: a finite number > 0 (None: half the period); unlike
        the constructor, a write may exceed the period (a test waiting out a loaded machine)."""
        return self._deadline_s

    @deadline_s.setter
    def deadline_s(self, deadline_s: float | None) -> None:
        check_deadline(deadline_s)
        self._deadline_s = self._period_s / 2 if deadline_s is None else float(deadline_s)

    @property
    def max_consecutive_misses(self) -> int | None:
        """Raise :class:`WatchdogError` after this many (>= 1) misses in a row; None: never. Writable."""
        return self._max_consecutive_misses

    @max_consecutive_misses.setter
    def max_consecutive_misses(self, max_consecutive_misses: int | None) -> None:
        check_max_misses(max_consecutive_misses)
        self._max_consecutive_misses = max_consecutive_misses

    @property
    def max_staleness_s(self) -> float | None:
        """Raise :class:`WatchdogError` when no fresh action came for this long (finite, > 0); None: never.
        Writable."""
        return self._max_staleness_s

    @max_staleness_s.setter
    def max_staleness_s(self, max_staleness_s: float | None) -> None:
        staleness = max_staleness_s
        self._max_staleness_s = None if staleness is None else checked_positive(staleness, "max_staleness_s")

    @property
    def max_delta(self) -> float | None:
        """The rate clamp's step: each action component moves at most this much from the last action
        returned (``max_rate * period_s`` when made); None: no clamp. Writable, from the next tick: a finite
        number > 0, or None."""
        return self._max_delta

    @max_delta.setter
    def max_delta(self, max_delta: float | None) -> None:
        self._max_delta = None if max_delta is None else checked_positive(max_delta, "max_delta")

    @max_delta.deleter
    def max_delta(self) -> None:
        raise AttributeError("ControlSession.max_delta cannot be deleted: write None for no clamp")

    @property
    def reset_timeout_s(self) -> float:
        """How long :meth:`reset` waits for the server (finite, > 0; None: the default). Writable."""
        return self._reset_timeout_s

    @reset_timeout_s.setter
    def reset_timeout_s(self, reset_timeout_s: float | None) -> None:
        timeout = DEFAULT_RESET_TIMEOUT_S if reset_timeout_s is None else reset_timeout_s  # as when made
        self._reset_timeout_s = checked_timeout(timeout, "reset_timeout_s")

    session_id: _Fixed[str] = _Fixed(
        "the server session this session's ticks name", "the server's session, its noise and its pin are opened with it"
    )
    contract_hash: _Fixed[str] = _Fixed(
        "the contract pin each new stream sends (16 lower-case hex digits)", "a pin is checked against the server then"
    )
    contract_json: _Fixed[str] = _Fixed(
        "the pinned contract's JSON, sent with the pin so that a refusal names the fields that differ",
        "it goes with contract_hash",
    )
    period_s: _Fixed[float] = _Fixed(
        "the control period", "the rate clamp's step and the default deadline follow from it"
    )
    initial_action: _Fixed[npt.NDArray[np.float32] | None] = _Fixed(
        "the first tick's reference for ``max_rate``; None: none", "only the session's first tick reads it"
    )
    pinned: _Fixed[bool] = _Fixed(
        "whether the caller pinned a contract; else the session pins the one served when it opened",
        "it says how the session was made",
    )
    fallback: _Fixed[str] = _Fixed(
        "what a tick without a fresh action acts on: ``hold``, ``zeros`` or ``local``",
        "a local fallback's model is loaded then",
        read=lambda session: session._fallback_policy.kind,
    )
    local: _Fixed[OnnxPolicy | None] = _Fixed(
        "the local fallback's policy (an :class:`~flowrl_deploy.policy.OnnxPolicy` on the CPU); None for ``hold`` and "
        "``zeros``",
        "it is the local fallback loaded then",
        read=lambda session: session._fallback_policy.local,
    )

    @property
    def seed(self) -> Seed | None:
        """The current episode's noise seed (the session's, then the latest :meth:`reset`'s)."""
        return self._seed

    @seed.setter
    def seed(self, _value: NoReturn) -> None:
        raise AttributeError(
            "ControlSession.seed is the current episode's: reset(seed) starts an episode with another "
            "(the server's noise and the local fallback's restart from it)"
        )

    @property
    def last_action(self) -> npt.NDArray[np.float32] | None:
        """The last action returned in this episode (what ``hold`` repeats), a read-only array; None before
        any, and after a reset. The session's own: ``act()`` returns the caller's copy."""
        return self._last_action

    @last_action.setter
    def last_action(self, _value: NoReturn) -> None:  # NoReturn: a type checker refuses writes
        raise self._last_action_refusal()

    @last_action.deleter
    def last_action(self) -> None:
        raise self._last_action_refusal()

    @staticmethod
    def _last_action_refusal() -> AttributeError:
        return AttributeError(
            "ControlSession.last_action is the last action returned (read-only): for the command the actuators "
            "hold, the max_rate clamp's reference (v0.1.0 code wrote last_action for it), pass initial_action= "
            "to client.session(...), or to reset(seed, initial_action=...) for a new episode; hold repeats only "
            "actions returned (the zeros before any)"
        )

    @property
    def _stream(self) -> StreamCall | None:
        """The open stream; None while none is (the server down, the session closed)."""
        return self._link.stream

    # --- the tick ------------------------------------------------------------------------------
    def act(self, obs: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """The action for this tick, fresh or fallback; raises :class:`WatchdogError` when unsafe.

        ``obs`` is one observation, [obs_dim] or [1, obs_dim], of finite numbers; another shape,
        NaN, Inf or a value beyond float32's range raises :class:`~flowrl_deploy.codec.TensorError`
        (also while the server is away)."""
        if not self._busy.acquire(blocking=False):
            raise self._in_use("act")
        try:
            self._check_open("act")
            return self._tick(self._checked_obs(obs))
        finally:
            self._busy.release()

    def _reference(self, initial_action: npt.ArrayLike | None) -> npt.NDArray[np.float32] | None:
        """An ``initial_action`` (the constructor's or ``reset``'s), checked: the clamp's reference, a
        read-only copy (the session's own, as ``last_action``); None: none."""
        if initial_action is None:
            return None
        if self._max_delta is None:
            raise FlowRLError("initial_action is used only with max_rate (it is the rate clamp's first reference)")
        return self._checked_initial_action(initial_action)

    def _checked_initial_action(self, initial_action: npt.ArrayLike) -> npt.NDArray[np.float32]:
        why = f"initial_action must hold {self.info.act_dim} finite numbers (the actuators' current command)"
        try:
            array = as_float32(initial_action, name="initial_action")
        except TensorError as exc:
            raise FlowRLError(f"{why}: {exc}") from None
        if array.shape != (self.info.act_dim,):
            raise FlowRLError(f"{why}, got shape {list(array.shape)}")
        if not np.isfinite(array).all():
            raise FlowRLError(f"{why}, got {array.tolist()}")
        low, high = self.info.action_low, self.info.action_high
        outside = np.flatnonzero(~self._within_bounds(array))
        if outside.size:
            i = int(outside[0])
            raise FlowRLError(
                f"initial_action[{i}] = {float(array[i])!r} lies outside the action bounds [{float(low[i])!r}, "
                f"{float(high[i])!r}] ({outside.size} of {array.size} do): the clamp would ramp from there through "
                "actions the policy never gives; give the actuators' command in the policy's units, or np.clip it "
                "into the bounds"
            )
        array = np.clip(array, low, high)  # a float32 rounding past a bound is taken (and clipped), as a tick takes it
        array.setflags(write=False)
        return array

    def _checked_obs(self, obs: npt.ArrayLike) -> npt.NDArray[np.float32]:
        array = as_float32(obs, name="obs")  # bool, text and complex are refused, as encode refuses them
        if array.shape not in self._obs_shapes:
            dim = self.info.obs_dim
            raise TensorError(f"obs: shape {list(array.shape)} does not match [{dim}] or [1, {dim}] (one per tick)")
        array = array.reshape(-1)
        check_finite(array, name="obs")
        return array

    def _tick(self, obs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        self._seq += 1
        seq = self._seq
        start = time.perf_counter()
        health = self.health
        health.ticks += 1
        if health.last_fresh is None:
            health.last_fresh = time.monotonic()
        try:
            reply = self._link.exchange(obs, seq, start + self._deadline_s)
        except BaseException as exc:
            if not isinstance(exc, Exception):  # interrupted (a Ctrl-C)
                if self._link.unanswered == seq:  # once the request was sent: the server draws for it, so must we
                    self._fallback_policy.draw()
                self._link.interrupted()
            raise
        # after the exchange, which may have restarted the local noise; a tick not sent draws nothing on the server
        noise = self._fallback_policy.undrawn() if reply is BACKLOG else self._fallback_policy.draw()
        action = None if isinstance(reply, str) else self._served_action(reply)
        if action is None and not isinstance(reply, str):
            reply = self._link.invalid_action()
        if not isinstance(reply, str):
            timing = self._timing(reply, start)
            self.timings.append(timing)
            self._link.recovered(health.consecutive_misses)
            health.consecutive_misses = 0
            health.last_fresh = health.fresh_at = time.monotonic()
            health.model_version = timing.model_version
            health.round_trips.observe(timing.round_trip_us / 1e6)
        else:
            action = self._fallback_policy.action(obs, noise, self._last_action)
            self.timings.append(CallTiming(seq, self.fallback, (time.perf_counter() - start) * 1e6, reason=reply))
            health.last_fallback_reason = reply
            health.fallbacks[reply] = health.fallbacks.get(reply, 0) + 1
            health.consecutive_misses += 1
            health.misses += 1
            if reply != CLOSED:  # the session's own close(), from another thread: no fault to stop the robot for
                self._watchdog()
        if self._max_delta is not None and self._clamp_from is not None:
            action = np.clip(action, self._clamp_from - self._max_delta, self._clamp_from + self._max_delta)
        if action.flags.writeable:  # a server's or local policy's action, or a clamped one
            action.setflags(write=False)
        self._last_action = self._clamp_from = action  # the session's own, read-only: "hold" repeats it
        return action.copy()

    def _served_action(self, reply: pb.StreamActReply) -> npt.NDArray[np.float32] | None:
        """The reply's action, or None where it is not one to apply: not act_dim finite numbers within the
        bounds (beyond float32 rounding), which only a broken or foreign model gives."""
        try:
            action = decode(reply.action, name="action")
        except TensorError:
            return None
        if action.shape != (self.info.act_dim,) or not self._within_bounds(action).all():
            return None
        return action

    def _within_bounds(self, action: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
        """Which components of ``action`` lie within the action bounds, up to float32 rounding (see
        :attr:`_bounds_taken`)."""
        low, high = self._bounds_taken
        return (action >= low) & (action <= high)

    def _watchdog(self) -> None:
        misses = self.health.consecutive_misses
        limit = self._max_consecutive_misses
        if limit is not None and misses >= limit:
            raise WatchdogError(f"{misses} control ticks in a row without a fresh action")
        stale = time.monotonic() - self.health.last_fresh
        staleness = self._max_staleness_s
        if staleness is not None and stale > staleness:
            raise WatchdogError(f"no fresh action for {stale * 1e3:.1f} ms (limit {staleness * 1e3:.1f} ms)")

    def _timing(self, reply: pb.StreamActReply, start: float) -> CallTiming:
        t3 = time.time_ns()
        t0, t1, t2 = reply.client_send_unix_ns, reply.server_recv_unix_ns, reply.server_send_unix_ns
        return CallTiming(
            seq=reply.seq,
            source="server",
            round_trip_us=(time.perf_counter() - start) * 1e6,
            server_us=(t2 - t1) / 1e3,
            inference_us=float(reply.inference_us),
            clock_offset_us=((t1 - t0) + (t2 - t3)) / 2e3,
            model_version=reply.model_version,
        )

    def _in_use(self, method: str) -> SessionBusyError:
        cure = (
            "skip this call, give each concurrent loop its own session, or (ROS 2) put the timer in a "
            "MutuallyExclusiveCallbackGroup"
            if method == "act"
            else "queue the reset for the control loop to call between ticks, or (ROS 2) put the service and "
            "the timer in one MutuallyExclusiveCallbackGroup"
        )
        return SessionBusyError(
            f"ControlSession.{method} called while another act or reset of this session runs: a ControlSession "
            f"takes calls from any thread, one at a time; {cure}"
        )

    def _check_open(self, method: str) -> None:
        if self._link.closed:
            raise closed_error(method)
        self.client.check_open()  # a closed client's channel never reconnects: no fallback would end

    # --- episodes and lifetime -------------------------------------------------------------------
    def reset(self, seed: Seed | None = None, *, initial_action: npt.ArrayLike | _Keep | None = LAST_ACTION) -> None:
        """A new episode: reseed the session's noise (and the local fallback's), forget the last
        action held (``hold`` falls back to the zeros until the episode's first action) and restart the
        staleness clock (time between episodes is not staleness); the count of misses in a row goes on,
        as only a fresh action shows the ticks work (a ``Reset`` goes by another path). The ``max_rate``
        clamp keeps its reference, the last action returned (the actuators still hold it), unless
        ``initial_action`` gives another: the command they hold now, for a robot moved between episodes
        (such as to a home pose; ``act_dim`` finite numbers within the action bounds, as the
        constructor's, and only with ``max_rate``), or None for none, the new episode's first action then
        unclamped (as v0.1.0's reset did).

        A tick that missed its deadline may still be queued on the server, where it would take
        the new episode's first noise draw; so ``Reset`` is sent only once the reply to the last
        tick sent has come (or its stream ended): an episode after a reset acts as a fresh session
        with that seed does. The wait and the server's ``Reset`` together take at most
        ``reset_timeout_s``. If either fails (the server is down, frozen or refuses, or the session
        was closed meanwhile) this raises :class:`ServiceError` (:class:`SessionClosedError` when closed)
        and the session is left as it was (seed, last action, local fallback noise), so the loop
        may carry on or try again; a reset whose ``Reset`` timed out may still have reached the
        server. No tick acts while it runs: call it between ticks, from the control loop's thread
        (a reset asked for by another thread, e.g. a ROS service, is best queued for that loop)."""
        seed = checked_seed(seed)
        keep = initial_action is LAST_ACTION
        reference = None if keep else self._reference(initial_action)
        if not self._busy.acquire(blocking=False):
            raise self._in_use("reset")
        try:
            self._check_open("reset")
            until = time.perf_counter() + self.reset_timeout_s
            self._link.await_last_reply(until, self.reset_timeout_s)
            self._check_open("reset")  # closed while it waited: its Reset would leave a session on the server
            remaining = until - time.perf_counter()
            if remaining <= 0:
                raise ServiceError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"reset_timeout_s {self.reset_timeout_s:g} s passed waiting for the last tick's reply; "
                    "the reset was not sent (try again)",
                )
            try:
                self.client.reset(
                    self.session_id,
                    seed,
                    contract_hash=self.contract_hash,
                    contract_json=self.contract_json,
                    timeout_s=remaining,
                )
            except ServiceError as exc:
                raise self._link.refused(exc) from None
            self._check_open("reset")  # closed while the server reset it: the session is gone, as is its episode
            self._seed = seed
            self._last_action = None
            if not keep:
                self._clamp_from = reference
            self.health.last_fresh = None  # time between episodes is no staleness; the misses in a row go on
            self._fallback_policy.reseed(seed)
        finally:
            self._busy.release()

    def close(self) -> None:
        """End the stream; a closed session refuses ``act`` and ``reset``. Closing again does nothing.

        A session dropped without it is closed when it is collected, with a :class:`ResourceWarning`
        (as Python's unclosed files): until then its stream holds a session, and a worker, on the server."""
        self._finalizer.detach()
        self._link.close()

    if not TYPE_CHECKING:  # a type checker refuses any name the class lacks; this guard is for setattr()

        def __setattr__(self, name: str, value: object) -> None:
            """Refuse a setting given only to the constructor (``max_rate``, ``backoff_s``, …): written by
            name (a ROS parameter callback's ``setattr(control, name, value)``), it must not pass for taken
            when no tick reads it. Other names, a subclass's own or a mock's, are set as usual."""
            if name == "max_rate":  # its effect is writable
                raise AttributeError(
                    "ControlSession has no setting 'max_rate' to write: it is fixed when the session is made, as "
                    "max_delta = max_rate * period_s, the clamp's step, which is writable (from the next tick)"
                )
            if name in _CONSTRUCTOR_ONLY:
                raise AttributeError(
                    f"ControlSession has no setting {name!r} to write: it is fixed when the session is made "
                    f"(open a new session with client.session(...)); the ones written after are "
                    f"{', '.join(WRITABLE_SETTINGS)}"
                )
            object.__setattr__(self, name, value)

    def __enter__(self) -> ControlSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dropped(link: StreamLink, session_id: str) -> None:
    """Warn of the session ``session_id``, collected without its close(), and close its stream."""
    try:
        warnings.warn(
            f"ControlSession {session_id} was dropped without close(), which ends its stream; close a session "
            "(or open it in a with block) when its control loop ends",
            ResourceWarning,
            stacklevel=1,
        )
    finally:  # also where ResourceWarning is made an error (pytest -W error): the stream still ends
        link.close()


if TYPE_CHECKING:  # the names that moved (MOVED), typed for old code; __getattr__ loads them
    from flowrl_deploy.contract import MAX_CONTROL_PERIOD_S as MAX_CONTROL_PERIOD_S
    from flowrl_deploy.contract import MAX_HZ as MAX_HZ
    from flowrl_deploy.contract import MIN_CONTROL_PERIOD_S as MIN_CONTROL_PERIOD_S
    from flowrl_deploy.contract import MIN_HZ as MIN_HZ

MOVED = dict.fromkeys(("MIN_HZ", "MAX_HZ", "MIN_CONTROL_PERIOD_S", "MAX_CONTROL_PERIOD_S"), "flowrl_deploy.contract")
"""v0.1.0's control-rate bounds, which this module imported from :mod:`flowrl_deploy.contract`, their home."""

if not TYPE_CHECKING:  # type checkers read the moved names from imports; a module __getattr__ would pass any typo
    __getattr__ = moved_names(__name__, MOVED)
