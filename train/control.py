"""A simulated robot: a fixed-rate control loop stepping a simulator with served actions.

``run_control`` is what ``flowrl control`` and ``flowrl demo`` call. With the same seed and no
fallback tick it reproduces ``flowrl eval`` of the served ONNX file: the session's noise generator
is seeded with ``seed`` and episode i resets with ``episode_seed(seed, i, stream=EVAL_STREAM)``
(:meth:`ControlReport.seeded_note` notes any fallback tick). It lives
in train, not in the core package: a simulator (dm_control) is no part of a robot computer's install.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from flowrl_deploy.client import PolicyClient
from flowrl_deploy.connection import connection_hint
from flowrl_deploy.contract import MAX_HZ, MIN_HZ
from flowrl_deploy.errors import FlowRLError, SimulationError
from flowrl_deploy.gc_freeze import gc_frozen
from flowrl_deploy.noise import run_seed_problem
from flowrl_deploy.session import (
    CallTiming,
    ControlSession,
    WatchdogError,
    check_session_settings,
    log,
    session_deadline,
)
from flowrl_deploy.train.envs import Env, episode_seed, make_env
from flowrl_deploy.train.evaluate import (
    EVAL_STREAM,
    Episode,
    check_env_fits,
    lengths_summary,
    other_task_warning,
    unstable_note,
)

MISS_WARNING_RATE = 0.01
"""A run with more of its ticks on the fallback than this says so in its summary: the robot mostly
held or guessed its actions (the server was away or too slow), which a return alone does not show."""
IN_STEP_REASONS = frozenset({"deadline", "DEADLINE_EXCEEDED"})
"""Fallback reasons of ticks the server still took (and drew their noise for): late, not lost."""
DEFAULT_HZ = 50.0
"""The control rate when none is given and the served policy's contract has no control period."""
CONTROL_FLAGS = {
    "deadline_s": "--deadline-ms",
    "fallback": "--fallback",
    "local_model": "--local-model",
    "max_consecutive_misses": "--max-misses",
}
"""The ``flowrl control`` flags of the session settings, for the errors of ``check_session_settings``."""


@dataclass
class ControlReport:
    """Figures of one ``run_control`` run (JSON-able with :meth:`to_dict`); latencies in µs."""

    server: str
    env_id: str
    hz: float
    contract_hz: float | None
    """The served policy's own rate (1 / its contract's control period); None if the contract has none."""
    seed: int
    deadline_ms: float
    returns: list[float]
    steps: int
    fresh_replies: int
    """Ticks that got a fresh served action in time; the latency figures cover these only."""
    deadline_misses: int
    """Ticks whose action was a fallback (no fresh reply within the deadline)."""
    fallbacks: dict[str, int]
    """The fallback ticks by ``CallTiming.reason`` ('deadline', 'disconnected', a server refusal's
    code such as 'RESOURCE_EXHAUSTED'), the most frequent first; empty when every tick was fresh."""
    overruns: int
    """Ticks that started later than one full period after their schedule."""
    round_trip_p50_us: float | None
    """None (as are the other latency figures) when no tick got a fresh reply."""
    round_trip_p99_us: float | None
    round_trip_p999_us: float | None
    jitter_us: float
    """Standard deviation of the tick start times around their schedule."""
    server_p50_us: float | None
    inference_p50_us: float | None
    clock_offset_us: float | None
    """Median estimated server-minus-client clock offset."""
    model_versions: list[str]
    round_trip_us: list[float] = field(repr=False)
    """Every fresh reply's round trip, for a histogram."""
    interrupted: bool = False
    """Ctrl-C (or a stop signal raised as :class:`~flowrl_deploy.errors.Interrupted`) ended the run early
    (``stop_on_interrupt``); the figures cover the ticks that ran."""
    watchdog: str = ""
    """Why the session's watchdog stopped the run (``max_misses`` misses in a row); empty if it did not."""
    lengths: list[int] = field(default_factory=list)
    """Each completed episode's steps, as ``returns``."""
    terminated: list[bool] = field(default_factory=list)
    """Whether the task ended each completed episode (a fall in HumanoidBench), not its time limit or --max-steps."""
    fallback: str = "hold"
    """The session's fallback (``--fallback``): hold, zeros or local."""
    unstable: list[str] = field(default_factory=list)
    """Why an unstable simulation cut each completed episode short, or '' (as ``returns``; :attr:`Episode.unstable`)."""

    @property
    def mean_return(self) -> float | None:
        """None when the run stopped before its first episode ended (no return to report)."""
        return float(np.mean(self.returns)) if self.returns else None

    @property
    def miss_rate(self) -> float:
        return self.deadline_misses / self.steps if self.steps else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "mean_return": self.mean_return, "miss_rate": self.miss_rate}

    def summary(self) -> str:
        if self.fresh_replies:
            latency = (
                f"round trip p50 {self.round_trip_p50_us:.0f} µs, p99 {self.round_trip_p99_us:.0f} µs, "
                f"p99.9 {self.round_trip_p999_us:.0f} µs (over {self.fresh_replies} fresh replies)"
            )
        else:
            latency = "round trip: no fresh replies, so no latency figures"
        n = len(self.returns)
        returns = f"return {self.mean_return:.2f} over {n} episode{'s' * (n != 1)}" if n else "no episode completed"
        lengths = lengths_summary(self.lengths, self.terminated, self.unstable)
        warning = (
            f"\nwarning: {100 * self.miss_rate:.1f}% of the ticks acted on the fallback, not a served action "
            "(the server was away, refused or slower than the deadline: see the fallbacks' reasons; --max-misses "
            "stops a run after that many in a row)"
            if self.miss_rate > MISS_WARNING_RATE
            else ""
        )
        if note := unstable_note(self.unstable):
            warning += f"\nwarning: {note}"
        reasons = ", ".join(f"{reason} {n}" for reason, n in self.fallbacks.items())
        return (
            f"{self.env_id} at {self.hz:g} Hz via {self.server}: {returns} ({self.steps} steps"
            f"{f'; episode {lengths}' if lengths else ''})\n"
            f"{latency}; jitter {self.jitter_us:.0f} µs; "
            f"ticks without a fresh action {self.deadline_misses} ({100 * self.miss_rate:.3f}%"
            f"{f': {reasons}' if reasons else ''}), overruns {self.overruns}{warning}"
        )

    def seeded_note(self) -> str:
        """A line saying that fallback ticks leave the seeded episode (``flowrl eval --seed``), or '':
        ``flowrl control`` prints it on stderr after the summary (stdout), as ``flowrl export`` its notes.

        A served action at tick t uses the session's noise draw t; ``hold`` and ``zeros`` act on
        something else, so one such tick changes the episode. ``local`` draws tick t's noise too, so
        it plays the seeded episode when every fallback tick still reached the server (a deadline
        miss) and the local model computes the served actions bit for bit; a tick the server never
        took (the stream down, a refusal) leaves its noise stream behind the ticks."""
        n = sum(self.fallbacks.values())
        if not n:
            return ""
        eval_ = f"`flowrl eval --seed {self.seed}`"
        ticks = f"{n} tick{'s' * (n != 1)} acted on the {self.fallback} fallback"
        if self.fallback == "local" and set(self.fallbacks) <= IN_STEP_REASONS:
            return (
                f"note: {ticks}: the return is the seeded episode's ({eval_} of the served file) only if "
                "--local-model computes the served actions bit for bit (the served file, both run on the CPU)"
            )
        return (
            f"note: {ticks}, so the return is not the seeded episode's: {eval_} of the served file "
            "matches a run with no fallback tick (a lower --hz misses fewer)"
        )


def _percentiles(samples: list[float], qs: tuple[float, ...]) -> list[float | None]:
    """Percentiles of ``samples``; None for each when there are none (never a made-up 0)."""
    return [float(x) for x in np.percentile(samples, qs)] if samples else [None] * len(qs)


def _tick_figures(timings: list[CallTiming], lateness: list[float]) -> dict[str, object]:
    """The report's tick, latency and jitter fields from a session's timings and each tick's lateness (s)."""
    fresh = [t for t in timings if t.source == "server"]
    rtt = [t.round_trip_us for t in fresh]
    p50, p99, p999 = _percentiles(rtt, (50, 99, 99.9))
    return {
        "steps": len(timings),
        "fresh_replies": len(fresh),
        "fallbacks": dict(collections.Counter(t.reason for t in timings if t.source != "server").most_common()),
        "round_trip_p50_us": p50,
        "round_trip_p99_us": p99,
        "round_trip_p999_us": p999,
        "jitter_us": float(np.std(lateness) * 1e6) if lateness else 0.0,
        "server_p50_us": _percentiles([t.server_us for t in fresh], (50,))[0],
        "inference_p50_us": _percentiles([t.inference_us for t in fresh], (50,))[0],
        "clock_offset_us": _percentiles([t.clock_offset_us for t in fresh], (50,))[0],
        "model_versions": sorted({t.model_version for t in fresh}),
        "round_trip_us": rtt,
    }


def run_control(
    server: str,
    env_id: str | None = None,
    hz: float | None = None,
    episodes: int = 1,
    seed: int = 0,
    *,
    token: str = "",
    tls_ca: str = "",
    tls_cert: str = "",
    tls_key: str = "",
    deadline_s: float | None = None,
    fallback: str = "hold",
    local_model: str = "",
    max_steps: int | None = None,
    max_misses: int | None = None,
    contract_hash: str = "",
    connect_timeout_s: float = 30.0,
    stop_on_interrupt: bool = False,
    on_rate: Callable[[float, float | None], None] | None = None,
    on_session: Callable[[ControlSession], None] | None = None,
) -> ControlReport:
    """Run ``episodes`` episodes of ``env_id`` (default: the served policy's) at ``hz``.

    Each tick: read the observation, ask the server (deadline ``deadline_s``, default half the
    period), step the simulator, sleep until the next tick. ``hz`` defaults to the served
    policy's rate (its contract's control period), else :data:`DEFAULT_HZ`; once connected,
    ``on_rate(hz, contract_hz)`` hears the rate used and the contract's (None if it has none), and
    ``on_session(session)`` the control session once it is open, before its first tick (``flowrl
    control --metrics-textfile`` writes its figures from another thread).
    ``max_steps`` caps each episode; ``max_misses`` misses in a row stop the run through the
    session's watchdog (``watchdog`` in the report says why). ``contract_hash`` pins the policy
    contract (the server then refuses any other); ``connect_timeout_s`` bounds the wait for the
    server to be SERVING. With ``stop_on_interrupt``, Ctrl-C (a KeyboardInterrupt: an
    :class:`~flowrl_deploy.errors.Interrupted` too, as ``flowrl control`` raises on SIGTERM and SIGHUP,
    :func:`~flowrl_deploy.signals.interrupt_on_stop_signals`) ends the run and the report covers
    what ran (``interrupted``). An ``env_id`` of another task than the served policy's is run, but
    warned about (logger ``flowrl.client``). Error messages name the ``flowrl control`` flags.
    """
    _check_run(hz, episodes, max_steps, seed)
    check_session_settings(
        fallback=fallback,
        local_model=local_model,
        max_consecutive_misses=max_misses,
        deadline_s=deadline_s,
        names=CONTROL_FLAGS,
    )
    with PolicyClient(
        server, token=token, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, target_name="--server"
    ) as client:
        _wait_ready(client, server, connect_timeout_s, tls_ca, tls_cert)
        info = client.spec()
        contract_hz = 1.0 / info.control_period_s if info.control_period_s > 0 else None
        hz = hz or contract_hz or DEFAULT_HZ
        if on_rate is not None:
            on_rate(hz, contract_hz)
        period = 1.0 / hz
        deadline_s = session_deadline(period, deadline_s, CONTROL_FLAGS["deadline_s"])
        env_id = env_id or info.env_id
        if not env_id:
            raise FlowRLError("the served policy does not name its environment; pass --env")
        with contextlib.ExitStack() as closing:  # a refusal below closes what opened before it
            env = make_env(env_id, seed)
            closing.callback(env.close)
            check_env_fits(env, (info.obs_dim, info.act_dim), info.env_id)
            warning = other_task_warning(env_id, info.env_id)
            if warning:
                log.warning("%s", warning)
            session = closing.enter_context(
                client.session(
                    period_s=period,
                    deadline_s=deadline_s,
                    seed=seed,
                    fallback=fallback,
                    local_model=local_model,
                    max_consecutive_misses=max_misses,
                    contract_hash=contract_hash,
                    max_timings=None,  # the report covers every tick of the run, which its episodes bound
                )
            )
            if on_session is not None:
                on_session(session)
            episodes_run: list[Episode] = []
            clock, interrupted, watchdog = _TickClock(period), False, ""
            try:
                with gc_frozen():  # no full garbage collection walks the setup's objects mid-run
                    for episode in range(episodes):
                        seeded = episode_seed(seed, episode, stream=EVAL_STREAM)
                        episodes_run.append(_control_episode(env, seeded, session.act, clock, max_steps))
            except WatchdogError as exc:
                watchdog = str(exc)
            except KeyboardInterrupt:
                if not stop_on_interrupt:
                    raise
                interrupted = True
    return ControlReport(
        server=server,
        env_id=env_id,
        hz=hz,
        contract_hz=contract_hz,
        seed=seed,
        deadline_ms=session.deadline_s * 1e3,
        returns=[e.total for e in episodes_run],
        lengths=[e.length for e in episodes_run],
        terminated=[e.terminated for e in episodes_run],
        unstable=[e.unstable for e in episodes_run],
        deadline_misses=session.health.misses,
        overruns=clock.overruns,
        interrupted=interrupted,
        watchdog=watchdog,
        fallback=fallback,
        **_tick_figures(session.timings, clock.lateness),
    )


def _check_run(hz: float | None, episodes: int, max_steps: int | None, seed: int) -> None:
    """Refuse run settings :func:`run_control` cannot honour, naming the ``flowrl control`` flag."""
    if hz is not None and not MIN_HZ <= hz <= MAX_HZ:  # 0, below and NaN too, in the same words
        raise FlowRLError(f"--hz {hz:g} is out of range: a control rate lies in [{MIN_HZ:g}, {MAX_HZ:g}] Hz")
    if episodes < 1:
        raise FlowRLError(f"--episodes must be >= 1, got {episodes}")
    if max_steps is not None and max_steps < 1:
        raise FlowRLError(f"--max-steps must be >= 1, got {max_steps}")
    problem = run_seed_problem("--seed", seed)
    if problem is not None:
        raise FlowRLError(problem)


_ASKED = "; is `flowrl serve` running there?"
"""How PolicyClient.wait_ready's error ends, a question a connection hint answers better."""


def _wait_ready(client: PolicyClient, server: str, timeout_s: float, tls_ca: str, tls_cert: str) -> None:
    """Wait for the server to be SERVING; a failure says what to check (TLS, address) when it can tell."""
    try:
        client.wait_ready(timeout_s=timeout_s)
    except FlowRLError as exc:
        message = str(exc)
        if hint := connection_hint(message, server, tls_ca, tls_cert):
            message = f"{message.removesuffix(_ASKED)}; {hint}"  # the hint replaces the question (as flowrl wait's)
        raise FlowRLError(message) from None


@dataclass
class _TickClock:
    """The fixed-rate schedule of an episode's ticks, and how late each tick started."""

    period: float
    lateness: list[float] = field(default_factory=list)
    """Seconds each tick started after its schedule."""
    overruns: int = 0
    """Ticks that started more than one period late."""

    def wait_for(self, start: float, tick: int) -> None:
        """Sleep until tick ``tick`` of an episode that started at ``start`` (perf_counter), and note its lateness."""
        scheduled = start + tick * self.period
        wait = scheduled - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        late = time.perf_counter() - scheduled
        self.lateness.append(late)
        self.overruns += late > self.period


def _control_episode(
    env: Env, seed: int, act: Callable[[np.ndarray], np.ndarray], clock: _TickClock, max_steps: int | None
) -> Episode:
    """One episode from a reset with ``seed``, at the clock's rate: each tick acts on the served action and steps
    the simulator, until the episode ends, ``max_steps``, or a reset or step the simulation cannot go on from."""
    total, terminated, truncated, steps = 0.0, False, False, 0
    try:
        obs = env.reset(seed)
        start = time.perf_counter()
        while not (terminated or truncated) and (max_steps is None or steps < max_steps):
            clock.wait_for(start, steps)
            obs, reward, terminated, truncated = env.step(act(obs))
            total += reward
            steps += 1
    except SimulationError as exc:
        return Episode(total, steps, False, unstable=str(exc))
    return Episode(total, steps, terminated)
