"""A simulated robot: a fixed-rate control loop stepping a simulator with served actions.

``run_control`` is what ``flowrl control`` and ``flowrl demo`` call. With the same seed it
reproduces ``flowrl eval`` of the served ONNX file: the session's noise generator is seeded
with ``seed`` and episode i resets with ``episode_seed(seed, i, stream=EVAL_STREAM)``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from flowrl_deploy.client import PolicyClient
from flowrl_deploy.errors import FlowRLError


@dataclass
class ControlReport:
    """Figures of one ``run_control`` run (JSON-able with :meth:`to_dict`); latencies in µs."""

    server: str
    env_id: str
    hz: float
    seed: int
    returns: list[float]
    steps: int
    deadline_misses: int
    """Ticks whose action was a fallback (no fresh reply within the deadline)."""
    overruns: int
    """Ticks that started later than one full period after their schedule."""
    round_trip_p50_us: float
    round_trip_p99_us: float
    round_trip_p999_us: float
    jitter_us: float
    """Standard deviation of the tick start times around their schedule."""
    server_p50_us: float
    inference_p50_us: float
    clock_offset_us: float
    """Median estimated server-minus-client clock offset."""
    model_versions: list[str]
    round_trip_us: list[float] = field(repr=False)
    """Every fresh reply's round trip, for a histogram."""
    interrupted: bool = False
    """Ctrl-C ended the run early (``stop_on_interrupt``); the figures cover the ticks that ran."""

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns)) if self.returns else 0.0

    @property
    def miss_rate(self) -> float:
        return self.deadline_misses / self.steps if self.steps else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "mean_return": self.mean_return, "miss_rate": self.miss_rate}

    def summary(self) -> str:
        return (
            f"{self.env_id} at {self.hz:g} Hz via {self.server}: return {self.mean_return:.2f} over "
            f"{len(self.returns)} episodes ({self.steps} steps)\n"
            f"round trip p50 {self.round_trip_p50_us:.0f} µs, p99 {self.round_trip_p99_us:.0f} µs, "
            f"p99.9 {self.round_trip_p999_us:.0f} µs; jitter {self.jitter_us:.0f} µs; "
            f"deadline misses {self.deadline_misses} ({100 * self.miss_rate:.3f}%), overruns {self.overruns}"
        )


def _percentiles(samples: list[float], qs: tuple[float, ...]) -> list[float]:
    return [float(x) for x in np.percentile(samples, qs)] if samples else [0.0] * len(qs)


def run_control(
    server: str,
    env_id: str | None = None,
    hz: float = 50.0,
    episodes: int = 1,
    seed: int = 0,
    *,
    token: str = "",
    tls_ca: str = "",
    deadline_s: float | None = None,
    fallback: str = "hold",
    local_model: str = "",
    max_steps: int | None = None,
    contract_hash: str = "",
    connect_timeout_s: float = 30.0,
    stop_on_interrupt: bool = False,
) -> ControlReport:
    """Run ``episodes`` episodes of ``env_id`` (default: the served policy's) at ``hz``.

    Each tick: read the observation, ask the server (deadline ``deadline_s``, default half the
    period), step the simulator, sleep until the next tick. ``max_steps`` caps each episode;
    ``contract_hash`` pins the policy contract (the server then refuses any other);
    ``connect_timeout_s`` bounds the wait for the server to be SERVING. With ``stop_on_interrupt``,
    Ctrl-C ends the run and the report covers what ran (``interrupted``).
    """
    from flowrl_deploy.train.envs import episode_seed, make_env
    from flowrl_deploy.train.evaluate import EVAL_STREAM

    if not hz > 0 or episodes < 1:  # `not >` also refuses NaN
        raise FlowRLError(f"need hz > 0 and episodes >= 1, got hz={hz}, episodes={episodes}")
    if max_steps is not None and max_steps < 1:
        raise FlowRLError(f"max steps must be >= 1, got {max_steps}")
    if deadline_s is not None and not deadline_s > 0:
        raise FlowRLError(f"the deadline must be > 0, got {deadline_s * 1e3:g} ms")
    if not 0 <= seed < 2**32:
        raise FlowRLError(f"seed must lie in [0, 2**32), got {seed}")
    period = 1.0 / hz
    with PolicyClient(server, token=token, tls_ca=tls_ca) as client:
        client.wait_ready(timeout_s=connect_timeout_s)
        info = client.spec()
        env_id = env_id or info.env_id
        if not env_id:
            raise FlowRLError("the served policy does not name its environment; pass --env")
        env = make_env(env_id, seed)
        if env.info.obs_dim != info.obs_dim or env.info.act_dim != info.act_dim:
            raise FlowRLError(
                f"{env_id} has obs/act dims {env.info.obs_dim}/{env.info.act_dim}, the served policy "
                f"{info.obs_dim}/{info.act_dim}"
            )
        session = client.session(
            period_s=period,
            deadline_s=deadline_s,
            seed=seed,
            fallback=fallback,
            local_model=local_model,
            contract_hash=contract_hash,
        )
        returns, lateness, overruns, interrupted = [], [], 0, False
        try:
            for episode in range(episodes):
                obs, total, done, steps = env.reset(episode_seed(seed, episode, stream=EVAL_STREAM)), 0.0, False, 0
                start = time.perf_counter()
                while not done and (max_steps is None or steps < max_steps):
                    scheduled = start + steps * period
                    wait = scheduled - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                    late = time.perf_counter() - scheduled
                    lateness.append(late)
                    overruns += late > period
                    obs, reward, terminated, truncated = env.step(session.act(obs))
                    total += reward
                    done = terminated or truncated
                    steps += 1
                returns.append(total)
        except KeyboardInterrupt:
            if not stop_on_interrupt:
                raise
            interrupted = True
        finally:
            session.close()
            env.close()
    fresh = [t for t in session.timings if t.source == "server"]
    rtt = [t.round_trip_us for t in fresh]
    p50, p99, p999 = _percentiles(rtt, (50, 99, 99.9))
    return ControlReport(
        server=server,
        env_id=env_id,
        hz=hz,
        seed=seed,
        returns=returns,
        steps=len(session.timings),
        deadline_misses=session.health.misses,
        overruns=int(overruns),
        round_trip_p50_us=p50,
        round_trip_p99_us=p99,
        round_trip_p999_us=p999,
        jitter_us=float(np.std(lateness) * 1e6) if lateness else 0.0,
        server_p50_us=_percentiles([t.server_us for t in fresh], (50,))[0],
        inference_p50_us=_percentiles([t.inference_us for t in fresh], (50,))[0],
        clock_offset_us=_percentiles([t.clock_offset_us for t in fresh], (50,))[0],
        model_versions=sorted({t.model_version for t in fresh}),
        round_trip_us=rtt,
        interrupted=interrupted,
    )
