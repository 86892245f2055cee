"""Evaluation: episodes of a policy on its own environment instance, summarised as mean ± std return
(with each episode's length and whether the task terminated it).

``evaluate`` takes any ``act_fn(obs [obs_dim]) -> action``, so it serves checkpoints (torch) and
exported ONNX policies alike; this module imports torch only inside :func:`checkpoint_act_fn`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowrl_deploy.envid import parse_env_id
from flowrl_deploy.errors import EnvIdError, FlowRLError, SimulationError
from flowrl_deploy.fieldtypes import is_integer, shown
from flowrl_deploy.train.envs import Env, episode_seed, make_env

ActFn = Callable[[np.ndarray], np.ndarray]
EVAL_STREAM = 1  # evaluation episodes draw their seeds from their own stream, apart from training's
EVAL_NOISE_STREAM = 2  # and the policy's noise during evaluations in training, apart from both


@dataclass(frozen=True)
class Episode:
    """One episode's return, length (env steps) and whether the task terminated it (a fall in
    HumanoidBench), not its time limit."""

    total: float
    length: int
    terminated: bool
    unstable: str = ""
    """Why the simulation could not go on (a :class:`SimulationError`'s message) where that cut the
    episode short after ``length`` steps; empty for an episode that ended as its task ends them."""


@dataclass(frozen=True)
class EvalResult:
    mean: float
    std: float
    returns: tuple[float, ...]
    lengths: tuple[int, ...] = ()
    terminated: tuple[bool, ...] = ()
    """Per episode, as ``returns``; empty in a result made from returns alone."""
    unstable: tuple[str, ...] = ()
    """Per episode, as ``returns``: why an unstable simulation cut it short, or '' (:attr:`Episode.unstable`)."""

    @classmethod
    def of(cls, episodes: list[Episode]) -> EvalResult:
        returns = [e.total for e in episodes]
        return cls(
            float(np.mean(returns)),
            float(np.std(returns)),
            tuple(returns),
            tuple(e.length for e in episodes),
            tuple(e.terminated for e in episodes),
            tuple(e.unstable for e in episodes),
        )

    def __str__(self) -> str:
        n = len(self.returns)
        spread = f" ± {self.std:.2f}" if n > 1 else ""  # one episode has no spread to show
        return f"{self.mean:.2f}{spread} over {n} episode{'s' * (n != 1)}"

    def lengths_summary(self) -> str:
        """'length 52 ± 14 steps, 2 of 2 ended by termination', or '' for a result made from returns alone."""
        return lengths_summary(self.lengths, self.terminated, self.unstable)

    def unstable_note(self) -> str:
        """'1 of 5 episodes was cut short by an unstable simulation: <why>', or '' where none was."""
        return unstable_note(self.unstable)


def lengths_summary(lengths: Sequence[int], terminated: Sequence[bool], unstable: Sequence[str] = ()) -> str:
    """'length 52 ± 14 steps, 2 of 2 ended by termination' for these episodes ('…, 1 of 2 cut short by
    an unstable simulation' where any was); '' for none."""
    if not lengths:
        return ""
    spread = f" ± {np.std(lengths):.0f}" if len(lengths) > 1 else ""
    cut = sum(map(bool, unstable))
    cut_short = f", {cut} of {len(unstable)} cut short by an unstable simulation" if cut else ""
    ended = f"{sum(terminated)} of {len(terminated)} ended by termination"
    return f"length {np.mean(lengths):.0f}{spread} steps, {ended}{cut_short}"


def unstable_note(unstable: Sequence[str]) -> str:
    """'1 of 5 episodes was cut short by an unstable simulation: <why the first was>' for these episodes'
    :attr:`Episode.unstable`, or '' where none was."""
    reasons = [reason for reason in unstable if reason]
    if not reasons:
        return ""
    was = "was" if len(reasons) == 1 else "were"
    return f"{len(reasons)} of {len(unstable)} episodes {was} cut short by an unstable simulation: {reasons[0]}"


def run_episode(act_fn: ActFn, env: Env, seed: int) -> Episode:
    """One episode, until termination or the time limit, or a reset or step from which the simulation cannot
    go on (:attr:`Episode.unstable`: the return and length are those of the steps before it)."""
    total, length, terminated, truncated = 0.0, 0, False, False
    try:
        obs = env.reset(seed)
        while not (terminated or truncated):
            action = act_fn(obs)
            if np.shape(action) == () and env.info.act_dim == 1:  # a scalar for a one-action task, as dm_control takes
                action = np.reshape(action, (1,))
            if np.shape(action) != (env.info.act_dim,):
                raise FlowRLError(
                    f"the policy returned an action of shape {list(np.shape(action))}, "
                    f"but {env.info.env_id} takes [{env.info.act_dim}]"
                )
            if not np.isfinite(action).all():
                raise FlowRLError(
                    f"the policy returned a NaN/infinite action on {env.info.env_id}: its weights are broken"
                )
            obs, reward, terminated, truncated = env.step(action)
            total += reward
            length += 1
    except SimulationError as exc:
        return Episode(total, length, False, unstable=str(exc))
    return Episode(total, length, terminated)


def evaluate(
    act_fn: ActFn,
    env: str | Env,
    episodes: int,
    seed: int = 0,
    *,
    dims: tuple[int, int] | None = None,
    on_episode: Callable[[Episode], object] | None = None,
    stop: Callable[[], bool] | None = None,
) -> EvalResult:
    """Run ``episodes`` episodes of ``act_fn`` on ``env`` (an id, or an environment instance).

    Episode i resets with a seed derived from (seed, i), so two evaluations with the same seed
    see the same initial states. ``dims``, the policy's (obs_dim, act_dim), refuses an environment
    of other sizes with a :class:`FlowRLError` before any step. ``on_episode`` is given each
    :class:`Episode` as it ends (so a caller stopped by Ctrl-C still has the finished ones). ``stop()``
    is asked after each episode: once true, the evaluation ends there, and the result covers the
    episodes run so far. ``episodes`` below 1 raises :class:`FlowRLError`, and so does an action of
    another shape than the environment's [act_dim].
    """
    if not (is_integer(episodes) and episodes >= 1):
        raise FlowRLError(f"episodes must be a whole number >= 1, got {shown(episodes)}")
    instance = make_env(env, seed) if isinstance(env, str) else env
    done: list[Episode] = []
    try:
        if dims is not None:
            check_env_fits(instance, dims)
        for i in range(episodes):
            done.append(run_episode(act_fn, instance, episode_seed(seed, i, stream=EVAL_STREAM)))
            if on_episode is not None:
                on_episode(done[-1])
            if stop is not None and stop():
                break
    finally:
        if isinstance(env, str):
            instance.close()
    return EvalResult.of(done)


def check_env_fits(env: Env, dims: tuple[int, int], trained_on: str = "") -> None:
    """Refuse an environment whose (obs_dim, act_dim) differ from the policy's ``dims``, naming the task
    the policy was ``trained_on`` when it records one."""
    if (env.info.obs_dim, env.info.act_dim) != tuple(dims):
        raise FlowRLError(
            f"{env.info.env_id} has obs/act dims {env.info.obs_dim}/{env.info.act_dim}, "
            f"the policy {dims[0]}/{dims[1]}: pass the --env it was trained on{f', {trained_on}' if trained_on else ''}"
        )


def other_task_warning(env_id: str, trained_on: str) -> str | None:
    """The warning for an --env ``env_id`` that names another task than the policy's ``trained_on``
    (a walk policy run on crawl, whose shapes match), or None when both name one task (``gym:h1-walk-v0``
    and ``h1-walk-v0`` do), the policy records none, or ``env_id`` is malformed (make_env refuses it: a
    warning first would only mislead)."""
    try:
        given = str(parse_env_id(env_id))
    except EnvIdError:
        return None
    if not trained_on:
        return None
    try:
        same = given == str(parse_env_id(trained_on))
    except EnvIdError:  # a malformed record compares as text
        same = env_id.strip() == trained_on.strip()
    return None if same else f"--env {env_id} is not the task the policy was trained on, {trained_on}"


def checkpoint_act_fn(
    path: str | Path, flow_steps: int | None = None, device: str = "auto", seed: int = 0, deterministic: bool = False
) -> ActFn:
    """An ``act_fn`` sampling the checkpoint's flow policy with ``flow_steps`` (default: its own N),
    drawing the noise as a :class:`~flowrl_deploy.policy.SeededPolicy` seeded ``seed`` does (or
    from a0 = 0 when ``deterministic``), so it plays the episodes its export plays with that seed."""
    from flowrl_deploy.train.actor import actor_act_fn, load_actor
    from flowrl_deploy.train.algorithm import resolve_device

    return actor_act_fn(load_actor(path, resolve_device(device)), seed, flow_steps, deterministic)
