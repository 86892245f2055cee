"""The control loop's session (no torch): :class:`ControlSession`, one ``StreamAct`` stream with a
deadline per tick, fallbacks and a watchdog (:class:`WatchdogError`); and the checks of its settings,
which ``flowrl control`` shares (:func:`check_session_settings`, :func:`session_deadline`).

with PolicyClient("localhost:50051") as client, client.session(period_s=0.02, seed=0, fallback="hold") as control:
    action = control.act(obs)                  # every control tick; never later than the deadline

Its warnings go to the logger ``flowrl.client``, the client library's.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import os
import queue
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt

from flowrl_deploy.client import (
    ContractMismatchError,
    PolicyClient,
    ServiceError,
    checked_contract_hash,
    pin_mismatch,
    service_error,
)
from flowrl_deploy.codec import TensorError, as_float32, check_finite, decode, encode
from flowrl_deploy.connection import checked_timeout, is_flag
from flowrl_deploy.contract import MAX_CONTROL_PERIOD_S, MAX_HZ, MIN_CONTROL_PERIOD_S, MIN_HZ, PolicyContract
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.exposition import LATENCY_BUCKETS_S, Histogram
from flowrl_deploy.fieldtypes import is_integer, is_number, shown
from flowrl_deploy.noise import Seed, checked_seed, draw_noise, session_noise
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb

log = logging.getLogger("flowrl.client")
PERIOD_MISMATCH = "period_s %g s (%g Hz) differs from the served policy's control period, %g s (%g Hz)"
"""The warning of a session whose period is not the served policy's (a caller that already warned filters it)."""

# Codes after which a control loop may carry on with its fallback; the others are mistakes to fix.
TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}
REFUSED_UNDRAWN = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}
"""The codes with which the server refuses a tick before drawing its noise (the session limit, a model
still loading): a stream's request refused so did not open its session, or opened it without a draw."""
DISCONNECTED = "disconnected"
"""The fallback reason of a tick without an open stream: the server is down, or the reconnection backs off."""
DEADLINE = "deadline"
"""The fallback reason of a tick whose reply did not come within its deadline."""
SERVER_CLOSED = "the server closed the stream, as it does when stopping or restarting"
"""Why a stream ended, when it ended without a reason of its own: a stopping server ends the streams it
serves (OK), cancels its idle ones (CANCELLED, whose details only repeat the code) and, with no grace
left, all calls (UNAVAILABLE, 'Cancelling all calls')."""
DEFAULT_MAX_TIMINGS = 100_000
"""How many ticks a :class:`ControlSession` keeps in ``timings`` by default (about 30 MB)."""
FALLBACKS = ("hold", "zeros", "local")
"""What a :class:`ControlSession` applies when no fresh action arrives in time: the last action,
zeros, or a local ONNX copy of the policy."""
DEFAULT_RESET_TIMEOUT_S = 1.0
"""How long :meth:`ControlSession.reset` waits by default: a reset comes between episodes, not in a
tick, and a second rides out a network spike or a garbage-collection pause."""


class WatchdogError(FlowRLError):
    """No fresh action for too long or too many times in a row: the robot should stop."""


def _positive(value: object, name: str) -> float:
    """``value`` as a float when it is a finite number > 0; else a :class:`FlowRLError` naming ``name``
    (NaN would pass every ``<`` check and turn a clamp or the watchdog off)."""
    if not (is_number(value) and math.isfinite(value) and value > 0):
        raise FlowRLError(f"{name} must be a finite number > 0, got {shown(value)}")
    return float(value)


SESSION_ARGUMENTS = {name: name for name in ("deadline_s", "fallback", "local_model", "max_consecutive_misses")}
"""How errors name a :class:`ControlSession`'s settings: by its own arguments. A command passes its
flags instead (``flowrl control``: ``--fallback``, ``--deadline-ms`` and so on)."""


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
    """Refuse :class:`ControlSession` settings that cannot work, before any connection: an unknown
    fallback, a local fallback without its model (or a model without it), a miss limit below 1, a
    deadline that is no finite number > 0. Errors name each setting as ``names`` maps it (keys as
    :data:`SESSION_ARGUMENTS`)."""
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
    if max_consecutive_misses is not None and not (is_integer(max_consecutive_misses) and max_consecutive_misses >= 1):
        unset = "" if is_flag(misses) else " or None"
        raise FlowRLError(f"{misses} must be an integer >= 1{unset}, got {shown(max_consecutive_misses)}")
    if deadline_s is not None and not (is_number(deadline_s) and math.isfinite(deadline_s) and deadline_s > 0):
        raise FlowRLError(f"{deadline} must be a finite number > 0, got {_duration(deadline, deadline_s)}")


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
    'disconnected' (no open stream: the server is down or the reconnection backs off), or the code
    name of the server's refusal of the tick or stream ('RESOURCE_EXHAUSTED', 'UNAVAILABLE',
    'DEADLINE_EXCEEDED' from the server's own deadline check, ...)."""


_END = object()


class _Stream:
    """One open ``StreamAct`` call: requests go through a queue, a reader thread collects replies."""

    def __init__(self, client: PolicyClient) -> None:
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.replies: queue.SimpleQueue = queue.SimpleQueue()
        self.error: ServiceError | None = None
        with client.calling():
            self.call = client.stub.StreamAct(iter(self.requests.get, _END), metadata=client.metadata)
        self._reader = threading.Thread(target=self._read, name="flowrl-stream", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for reply in self.call:
                self.replies.put(reply)
            self.error = ServiceError(grpc.StatusCode.UNAVAILABLE, SERVER_CLOSED)
        except grpc.RpcError as exc:
            self.error = service_error(exc)
        self.replies.put(_END)

    def close(self) -> None:
        self.requests.put(_END)
        self.call.cancel()
        self._reader.join(timeout=1.0)


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


def _check_local_file(local_model: str | os.PathLike[str], model_version: str) -> None:
    """Warn when the local fallback's file is not the served one: the served ``model_version`` is
    ``v<generation>-<sha256 prefix of the served file>``. Matching contracts say only that the
    shapes, bounds and names agree; another seed's or checkpoint's weights have them too. Not an
    error: a server serving a checkpoint exports its own file, whose bytes may differ from yours."""
    served = model_version.partition("-")[2]
    local = hashlib.sha256(Path(local_model).read_bytes()).hexdigest()  # a policy file: a few MB at most
    if served and not local.startswith(served):
        log.warning(
            "the local fallback model %s (sha256 %s) is not the file the server serves (model version %s): "
            "the contracts match, but a fallback action may come from other weights than the server's; "
            "pass the served .onnx file",
            local_model,
            local[: len(served)],
            model_version,
        )


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
    as the server's session does, one block every tick, served or not, so a fallback at tick t acts on
    the server's draw for tick t (a tick the server never took, the stream down or refused, leaves the
    server's stream behind the ticks until the tick that opens the session on a reopened stream, which
    restarts both from the seed). Its contract must be the served one (else :class:`FlowRLError`); a
    file other than the served one (its sha256 is not the one in the served ``model_version``) and a
    ``period_s`` other than the served policy's control period are logged as warnings (logger
    ``flowrl.client``), not refused.
    The watchdog raises :class:`WatchdogError` after ``max_consecutive_misses`` misses in a row
    or when the last fresh action is older than ``max_staleness_s`` (counted from the first tick,
    and again after each :meth:`reset`). A broken stream is reopened with exponential backoff
    (each wait drawn at random from [half, all] of it, so that robots that lost the same server do
    not retry in step; the server then restarts the session's noise from ``seed``).
    Each fallback tick's ``CallTiming.reason`` says why (also ``health.last_fallback_reason``); a
    change to a server refusal or to ``disconnected`` is logged once as a warning (logger
    ``flowrl.client``), and the first fresh action after it at INFO: not once per tick.

    A session serves one control loop, whose calls may come from any thread, one at a time (a ROS 2
    executor's pool runs each timer callback on any of its threads): ``act`` or ``reset`` called
    while another is running (from a second thread) raises :class:`FlowRLError`, as does either
    after :meth:`close`.
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
            zeros), and :meth:`reset` keeps the reference: a new episode starts from where the last one
            left the actuators. The session's first tick has no reference unless ``initial_action``
            gives one, and is then not clamped.
        initial_action: the command the actuators hold when the session opens (``act_dim`` finite
            numbers): the first tick's reference for ``max_rate`` (and only for it: ``hold`` before any
            action still holds the zeros); None: the first tick is not clamped.
        contract_hash / contract: pin the policy contract (its 16 hex digit hash, as ``flowrl inspect``
            prints it, any case; or the contract itself, so that a refusal names the fields that differ).
            A pin the server does not serve raises :class:`~flowrl_deploy.client.ContractMismatchError`
            here; a malformed hash, :class:`FlowRLError`. Without either, the session pins the contract
            served when it opens (``info``): a server restarted with another interface is refused,
            ``act`` raising :class:`~flowrl_deploy.client.ContractMismatchError`, never followed.
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
        if not (is_number(period_s) and MIN_CONTROL_PERIOD_S <= period_s <= MAX_CONTROL_PERIOD_S):
            raise FlowRLError(
                f"period_s must lie in [{MIN_CONTROL_PERIOD_S:g}, {MAX_CONTROL_PERIOD_S:g}] s (a control rate "
                f"of {MIN_HZ:g} to {MAX_HZ:g} Hz), got {shown(period_s)}"
            )
        deadline_s = session_deadline(period_s, deadline_s)
        if max_timings is not None and not (is_integer(max_timings) and max_timings >= 1):
            raise FlowRLError(f"max_timings must be an integer >= 1 or None (all), got {shown(max_timings)}")
        if not (isinstance(backoff_s, (tuple, list)) and len(backoff_s) == 2 and all(map(is_number, backoff_s))):
            raise FlowRLError(f"backoff_s must be two numbers of seconds (first, longest), got {backoff_s!r}")
        first, longest = (_positive(b, "backoff_s") for b in backoff_s)
        if first > longest:
            raise FlowRLError(f"backoff_s must have first <= longest, got ({first:g}, {longest:g})")
        self.client = client
        self.period_s = float(period_s)
        self.deadline_s = deadline_s
        self.session_id = session_id or f"control-{uuid.uuid4().hex[:12]}"
        self.seed = checked_seed(seed)
        self.fallback = fallback
        self.max_consecutive_misses = max_consecutive_misses
        self.max_staleness_s = None if max_staleness_s is None else _positive(max_staleness_s, "max_staleness_s")
        self.max_delta = None if max_rate is None else _positive(max_rate, "max_rate") * self.period_s
        if initial_action is not None and max_rate is None:
            raise FlowRLError("initial_action is used only with max_rate (it is the rate clamp's first reference)")
        self.reset_timeout_s = checked_timeout(
            DEFAULT_RESET_TIMEOUT_S if reset_timeout_s is None else reset_timeout_s, "reset_timeout_s"
        )
        pin = checked_contract_hash(contract_hash)
        self.info = client.spec()
        if why := pin_mismatch(self.info, pin, contract, client.target):
            raise ContractMismatchError(why)
        self.pinned = bool(pin or contract)
        """Whether the caller pinned a contract; else the session pins the one served when it opened."""
        # The server checks the pin (and names what differs, from the contract) on each stream it opens:
        # a server restarted with another interface is refused, never followed.
        self.contract_hash = pin or (contract.hash() if contract else self.info.contract_hash)
        self.contract_json = json.dumps((contract or self.info.contract).to_dict(), sort_keys=True)
        served_period_s = self.info.control_period_s
        if served_period_s > 0 and not math.isclose(self.period_s, served_period_s, rel_tol=1e-6):
            log.warning(
                PERIOD_MISMATCH,
                self.period_s,
                1 / self.period_s,
                served_period_s,
                1 / served_period_s,
            )
        self.local = None
        self._local_noise: np.random.Generator | None = None
        """The local fallback's noise, as the server's session draws it: one block every tick (served
        or not), restarted from the seed by the request that opens the session on a stream, so that a
        fallback at tick t acts on the server's draw for tick t."""
        if fallback == "local":
            from flowrl_deploy.policy import OnnxPolicy  # onnxruntime, loaded only for a local fallback

            # On the CPU: predictable, a CPU server's actions, and no competition for a GPU.
            self.local = OnnxPolicy(local_model, providers=["CPUExecutionProvider"])
            if self.local.takes_noise:
                self._local_noise = session_noise(seed)
            if self.local.contract_hash != self.info.contract_hash:
                diff = "; ".join(self.info.contract.differences(self.local.contract))
                raise FlowRLError(f"the local fallback model {local_model} is not the served policy ({diff})")
            _check_local_file(local_model, self.info.model_version)
            # One run on zeros now (drawing no noise), so that the first tick falling back, when the robot
            # is already late, does not pay onnxruntime's first-run costs.
            dims = self.local.contract
            zero_noise = np.zeros((1, dims.act_dim), np.float32) if self.local.takes_noise else None
            self.local.run(np.zeros((1, dims.obs_dim), np.float32), zero_noise)
        zeros = np.zeros(self.info.act_dim, np.float32)
        if len(self.info.action_low) == len(self.info.action_high) == self.info.act_dim:
            zeros = np.clip(zeros, self.info.action_low, self.info.action_high)  # bounds may exclude 0
        self._zeros = zeros
        self._obs_shapes = ((self.info.obs_dim,), (1, self.info.obs_dim))
        self.timings: collections.deque[CallTiming] = collections.deque(maxlen=max_timings)
        self.health = _Health(model_version=self.info.model_version)
        self.last_action: npt.NDArray[np.float32] | None = None
        """The last action returned in this episode (what ``hold`` repeats); None before any, and after a reset."""
        self.initial_action = None if initial_action is None else self._checked_initial_action(initial_action)
        self._clamp_from = self.initial_action
        """The ``max_rate`` clamp's reference: the last action returned, across resets; at first ``initial_action``."""
        self._seq = 0
        self._busy = threading.Lock()
        self._closed = False
        self._backoff_s = (first, longest)
        self._retry_in = first
        self._retry_at = 0.0
        self._jitter = random.Random()  # the session's own (seeded from os.urandom), not the global state
        self._opened = False
        self._restart_noise = True  # whether the next request sent may open the session on its stream
        self._noise_from = 0  # the tick whose request last restarted the local fallback's noise
        self._down = DISCONNECTED  # the reason of the ticks while no stream is open
        self._warned = ""  # the fallback reason last logged since the last fresh action
        self._stream: _Stream | None = _Stream(client)
        self._unanswered = 0  # the last tick sent on the stream whose reply has not come (0: none)

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
        return array.copy()

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
        reply = self._exchange(self._live_stream(), obs, seq, start + self.deadline_s)
        noise = self._local_draw()  # after the exchange, which may have restarted the local noise
        if not isinstance(reply, str):
            action = decode(reply.action, name="action")
            timing = self._timing(reply, start)
            self.timings.append(timing)
            if self._warned:
                self._recovered()
            health.consecutive_misses = 0
            health.last_fresh = health.fresh_at = time.monotonic()
            health.model_version = timing.model_version
            health.round_trips.observe(timing.round_trip_us / 1e6)
        else:
            action = self._fallback(obs, noise)
            self.timings.append(CallTiming(seq, self.fallback, (time.perf_counter() - start) * 1e6, reason=reply))
            health.last_fallback_reason = reply
            health.fallbacks[reply] = health.fallbacks.get(reply, 0) + 1
            health.consecutive_misses += 1
            health.misses += 1
            self._watchdog()
        if self.max_delta is not None and self._clamp_from is not None:
            action = np.clip(action, self._clamp_from - self.max_delta, self._clamp_from + self.max_delta)
        self.last_action = self._clamp_from = action  # the session's own: never handed out, so "hold" repeats it
        return action.copy()

    def _local_draw(self) -> npt.NDArray[np.float32] | None:
        """This tick's local fallback noise, the block the server draws for it; None without a local
        fallback taking noise."""
        if self._local_noise is None:
            return None
        return draw_noise(self._local_noise, 1, self.info.act_dim)

    def _restart_local_noise(self, opening: int) -> None:
        """Restart the local fallback's noise from the seed where the server restarts its own: with
        tick ``opening``'s request, which may open the session on its stream. The ticks from ``opening``
        up to this one (excluded) have passed, and their blocks are drawn and dropped."""
        if self._local_noise is None or self.seed is None:
            return
        self._local_noise = session_noise(self.seed)
        self._noise_from = opening
        for _ in range(opening, self._seq):
            draw_noise(self._local_noise, 1, self.info.act_dim)

    def _exchange(
        self, stream: _Stream | None, obs: npt.NDArray[np.float32], seq: int, until: float
    ) -> pb.StreamActReply | str:
        """The fresh reply to tick ``seq`` sent on ``stream``, or why there is none (a :attr:`CallTiming.reason`)."""
        if stream is None:
            return self._down
        request = pb.StreamActRequest(
            session_id=self.session_id,
            seq=seq,
            obs=encode(obs, name="obs"),
            client_send_unix_ns=time.time_ns(),
            timeout_us=max(1, int((until - time.perf_counter()) * 1e6)),
        )
        if not self._opened:
            if self.seed is not None:
                request.seed = self.seed
            request.contract_hash = self.contract_hash
            request.contract_json = self.contract_json
        stream.requests.put(request)
        self._unanswered = seq
        if self._restart_noise:  # the server may open the session with this request, and draw for it
            self._restart_local_noise(seq)
            self._restart_noise = False
        while True:
            reply = _next_reply(stream, until)
            if reply is None:
                return DEADLINE
            if reply is _END:
                return self._broken()
            if reply.seq != seq:  # the late answer to an earlier tick
                if self._refused_undrawn(reply) and reply.seq >= self._noise_from:
                    self._restart_local_noise(reply.seq + 1)  # no draw for it: a later request opens the session
                continue
            self._unanswered = 0
            if reply.status.code == 0:
                self._opened = True  # only now: a refused opening is sent again with the seed and pin
                self._retry_in, self._retry_at = self._backoff_s[0], 0.0  # a later break retries soon again
                return reply
            code = grpc.StatusCode[_code_name(reply.status.code)]
            if self._refused_undrawn(reply):
                self._restart_noise = True  # the server drew nothing: the next request opens the session afresh
            if code not in TRANSIENT:
                raise self._refused(ServiceError(code, reply.status.message))
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:  # the server found the tick late: not logged, as "deadline"
                return code.name
            return self._noted(code.name, f"the server refuses its ticks ({code.name}: {reply.status.message})")

    def _refused_undrawn(self, reply: pb.StreamActReply) -> bool:
        """Whether ``reply`` refuses a request that would have opened the session, before any draw."""
        return (
            not self._opened
            and reply.status.code != 0
            and grpc.StatusCode[_code_name(reply.status.code)] in REFUSED_UNDRAWN
        )

    def _live_stream(self) -> _Stream | None:
        if self._stream is not None:
            return self._stream
        now = time.monotonic()
        if now < self._retry_at:
            return None
        self._retry_at = self._next_try(now)
        self._retry_in = min(self._retry_in * 2, self._backoff_s[1])
        self._opened = False
        self._restart_noise = True  # the new stream's first request restarts the server's noise from the seed
        self._stream = stream = _Stream(self.client)
        self._unanswered = 0
        if self._closed:  # close() ran meanwhile (from another thread) and saw no stream to close
            self.close()
            raise self._closed_error("act")
        return stream

    def _broken(self) -> str:
        """Drop the stream that ended; the reason of the ticks until one is open again."""
        self.client.check_open()  # closed meanwhile, from another thread
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()  # also before raising: else gRPC's thread feeding the call waits on its queue for good
            error = stream.error
            if error.code not in TRANSIENT:
                raise self._refused(error)
            if error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                if error.details in ("", "CANCELLED", "Cancelling all calls"):  # gRPC's own, at a server's stop
                    error = ServiceError(error.code, SERVER_CLOSED)  # not "(CANCELLED: CANCELLED)"
                self._down = self._noted(DISCONNECTED, f"no stream to the server, reconnecting with backoff ({error})")
            else:  # the server refused the stream itself (RESOURCE_EXHAUSTED: all its workers busy)
                self._down = self._noted(error.code.name, f"the server refuses its stream ({error})")
        if not self._retry_at or time.monotonic() >= self._retry_at:
            self._retry_at = self._next_try(time.monotonic())
        return self._down

    def _next_try(self, now: float) -> float:
        """When to try to reconnect next: after a wait drawn from [half, all] of the backoff ("equal
        jitter"), so that a fleet of robots that lost one server does not retry it in step."""
        return now + self._jitter.uniform(self._retry_in / 2, self._retry_in)

    def _noted(self, reason: str, why: str) -> str:
        """``reason``, a server refusal or ``disconnected``, logged as a warning when it is not the one
        last logged since the last fresh action: a robot at 1 kHz logs once per cause, not once per tick
        (slow ticks in between, ``deadline``, are the watchdog's business and change nothing)."""
        if reason != self._warned:
            self._warned = reason
            log.warning("control session %s acts on its %s fallback: %s", self.session_id, self.fallback, why)
        return reason

    def _recovered(self) -> None:
        log.info(
            "control session %s has fresh actions again after %d ticks on its %s fallback (%s)",
            self.session_id,
            self.health.consecutive_misses,
            self.fallback,
            self._warned,
        )
        self._warned = ""

    def _fallback(self, obs: npt.NDArray[np.float32], noise: npt.NDArray[np.float32] | None) -> npt.NDArray[np.float32]:
        if self.local is not None:
            return self.local.run(obs[None], noise)[0]
        if self.fallback == "hold" and self.last_action is not None:
            return self.last_action
        return self._zeros

    def _watchdog(self) -> None:
        misses = self.health.consecutive_misses
        if self.max_consecutive_misses is not None and misses >= self.max_consecutive_misses:
            raise WatchdogError(f"{misses} control ticks in a row without a fresh action")
        stale = time.monotonic() - self.health.last_fresh
        if self.max_staleness_s is not None and stale > self.max_staleness_s:
            raise WatchdogError(f"no fresh action for {stale * 1e3:.1f} ms (limit {self.max_staleness_s * 1e3:.1f} ms)")

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

    def _refused(self, error: ServiceError) -> ServiceError:
        """The error to raise for the server's refusal ``error``: a refused pin (FAILED_PRECONDITION, the
        one precondition of a tick or a reset) as :class:`ContractMismatchError`, saying so when the
        session pinned the contract served when it opened; any other as it is."""
        if error.code != grpc.StatusCode.FAILED_PRECONDITION:
            return error
        if self.pinned:
            return ContractMismatchError(error.details)
        return ContractMismatchError(
            f"the served policy contract changed since this session opened ({error.details}); the session "
            f"pinned the contract served then, {self.info.contract_hash}, rather than act on another interface: "
            "check the new contract (`flowrl inspect --server`), then open a new session"
        )

    def _in_use(self, method: str) -> FlowRLError:
        return FlowRLError(
            f"ControlSession.{method} called while another act or reset of this session runs: a ControlSession "
            "takes calls from any thread, one at a time; skip this call, give each concurrent loop its own "
            "session, or (ROS 2) put the timer in a MutuallyExclusiveCallbackGroup"
        )

    def _closed_error(self, method: str) -> FlowRLError:
        return FlowRLError(f"ControlSession.{method} after close(): open a new session with client.session(...)")

    def _check_open(self, method: str) -> None:
        if self._closed:
            raise self._closed_error(method)
        self.client.check_open()  # a closed client's channel never reconnects: no fallback would end

    # --- episodes and lifetime -------------------------------------------------------------------
    def reset(self, seed: Seed | None = None) -> None:
        """A new episode: reseed the session's noise (and the local fallback's), forget the last
        action held (``hold`` falls back to the zeros until the episode's first action) and restart the
        staleness clock. The ``max_rate`` clamp keeps its reference, the last action returned: the
        actuators still hold it.

        A tick that missed its deadline may still be queued on the server, where it would take
        the new episode's first noise draw; so ``Reset`` is sent only once the reply to the last
        tick sent has come (or its stream ended): an episode after a reset acts as a fresh session
        with that seed does. The wait and the server's ``Reset`` together take at most
        ``reset_timeout_s``. If either fails (the server is down, frozen or refuses, or the session
        was closed meanwhile) this raises :class:`ServiceError` (:class:`FlowRLError` when closed)
        and the session is left as it was (seed, last action, local fallback noise), so the loop
        may carry on or try again; a reset whose ``Reset`` timed out may still have reached the
        server. No tick acts while it runs: call it between ticks, from the control loop's thread
        (a reset asked for by another thread, e.g. a ROS service, is best queued for that loop)."""
        seed = checked_seed(seed)
        if not self._busy.acquire(blocking=False):
            raise self._in_use("reset")
        try:
            self._check_open("reset")
            until = time.perf_counter() + self.reset_timeout_s
            self._await_last_reply(until)
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
                raise self._refused(exc) from None
            self.seed = seed
            self.last_action = None
            self.health.last_fresh = None
            self.health.consecutive_misses = 0  # the server answered: a new episode starts with no misses
            if self._local_noise is not None:
                self._local_noise = session_noise(seed)
        finally:
            self._busy.release()

    def _await_last_reply(self, until: float) -> None:
        """Wait (until ``until``, time.perf_counter) for the server to answer every tick sent on the
        stream, dropping the late replies; raise :class:`ServiceError` if it has not by then."""
        stream, seq = self._stream, self._unanswered
        if stream is None or not seq:
            return
        while (reply := _next_reply(stream, until)) is not _END:
            if reply is None:
                raise ServiceError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no reply to tick {seq} within reset_timeout_s {self.reset_timeout_s:g} s: the server may "
                    "still draw that tick's noise, so the reset was not sent (try again, or open a new session)",
                )
            if reply.seq == seq:
                break
        else:
            stream.replies.put(_END)  # the stream ended: the next tick sees it, and reconnects
        self._unanswered = 0

    def close(self) -> None:
        """End the stream; a closed session refuses ``act`` and ``reset``. Closing again does nothing."""
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def __enter__(self) -> ControlSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _next_reply(stream: _Stream, until: float) -> pb.StreamActReply | object | None:
    """The stream's next reply (or ``_END``), waited for until ``until`` (time.perf_counter); None after."""
    remaining = until - time.perf_counter()
    try:
        return stream.replies.get(timeout=remaining) if remaining > 0 else stream.replies.get_nowait()
    except queue.Empty:
        return None


def _code_name(value: int) -> str:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code.name
    return "UNKNOWN"
