"""The training loop of `flowrl train`: act, store, update, evaluate, log, checkpoint.

One gradient update per environment step once ``start_steps`` uniformly random warm-up steps have
filled the buffer. A time-limit truncation ends the episode but keeps the bootstrap (mask 1); only
a true termination masks it. Evaluation runs on its own environment instance.

Resuming restores the networks, optimizers, RNG states, counters and (when it was saved) the
replay buffer; the episode that was running at the save restarts from its reset, so a run
resumed from a checkpoint taken at an episode boundary continues exactly as if never stopped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shlex
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from flowrl_deploy.affinity import check_thread_count
from flowrl_deploy.checkpoint import DOCUMENT_FILE, read_document, read_spec, symlinks_refused
from flowrl_deploy.errors import CheckpointError, FlowRLError, Interrupted, SimulationError, counted
from flowrl_deploy.signals import SCHEDULER_NOTICES, STOP_SIGNALS, install_stop_handlers
from flowrl_deploy.spec import PolicySpec
from flowrl_deploy.train.actor import actor_act_fn
from flowrl_deploy.train.algorithm import FlowRL, resolve_device
from flowrl_deploy.train.checkpointing import EvalRecord, finite_or_none, restore_training, save_training_checkpoint
from flowrl_deploy.train.config import (
    ConfigError,
    TrainConfig,
    check_resume_settings,
    check_unfinished,
    new_run_tau_note,
    tau_conversion,
)
from flowrl_deploy.train.envs import Env, EnvInfo, episode_seed, make_env
from flowrl_deploy.train.evaluate import EVAL_NOISE_STREAM, EvalResult, evaluate
from flowrl_deploy.train.logger import (
    EPISODE_RETURN,
    EPISODE_UNSTABLE,
    MetricsError,
    MetricsLogger,
    Progress,
    RateMeter,
)
from flowrl_deploy.train.replay import ReplayBuffer
from flowrl_deploy.train.resources import disk_space_note, memory_shortfall
from flowrl_deploy.train.resume import (
    check_new_run_dir,
    remove_leftovers,
    resume_config,
    resume_warnings,
    run_resume_point,
    run_to_resume,
    set_aside_advice,
)
from flowrl_deploy.train.retention import RunCheckpoints
from flowrl_deploy.train.run_lock import RunLock

log = logging.getLogger("flowrl.train")
"""A run's warnings: those of its start (its directory goes unlocked, …), logged just before ``on_start``,
and each episode an unstable simulation cut short."""
MAX_UNSTABLE_IN_A_ROW = 10
"""Episodes in a row that an unstable simulation cut short before their first step was stored, after which a
run stops: it would learn nothing more."""


@dataclass
class Counters:
    env_steps: int = 0
    episodes: int = 0
    best_eval_return: float = -math.inf
    last_eval_return: float | None = None
    last_eval_step: int | None = None
    """The env step of the evaluation ``last_eval_return`` comes from."""
    last_eval_unstable: bool = False
    """Whether an unstable simulation cut an episode of that evaluation short."""

    @classmethod
    def restored(cls, env_steps: int, episodes: int, evaluation: EvalRecord) -> Counters:
        """The counters of a checkpoint (:func:`~flowrl_deploy.train.checkpointing.restore_training`)."""
        best = -math.inf if evaluation.best_return is None else evaluation.best_return
        return cls(env_steps, episodes, best, evaluation.last_return, evaluation.last_step, evaluation.last_unstable)

    def evaluation(self) -> EvalRecord:
        """The checkpoint's ``eval`` record of these counters."""
        return EvalRecord(
            finite_or_none(self.best_eval_return),
            self.last_eval_return,
            self.last_eval_step,
            last_unstable=self.last_eval_unstable,
        )


class TrainingInterrupted(Interrupted):
    """A second Ctrl-C stopped :func:`train` at once, saving nothing more: ``last_checkpoint``
    (None if none) is the last one saved, or resumed from, in ``run_dir``."""

    def __init__(self, signum: int, run_dir: Path, last_checkpoint: Path | None) -> None:
        super().__init__(signum)
        self.run_dir, self.last_checkpoint = run_dir, last_checkpoint


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    last_checkpoint: Path | None
    counters: Counters
    interrupted: bool = False
    """A stop signal (Ctrl-C, SIGTERM, SIGUSR1, SIGUSR2, SIGHUP) ended the run early; ``last_checkpoint``
    holds the state at the stop."""
    stop_signal: int | None = None
    """The signal that stopped it (``signal.SIGINT``, ``signal.SIGTERM``, …), or None."""


class _StopOnSignal:
    """Set by the first stop signal, so the loop stops between two steps and saves a consistent
    ``last`` checkpoint: Ctrl-C, SIGTERM (a job scheduler's stop), SIGUSR1 or SIGUSR2 (the notice
    a scheduler gives before its time limit: SLURM's ``--signal=USR1@300``, LSF, submitit), SIGHUP
    (a closed terminal), and on Windows Ctrl-Break (SIGBREAK); those the system lacks are left out
    (Windows has no SIGUSR1, SIGUSR2 or SIGHUP). Ctrl-C and SIGHUP stay ignored when ignored at start
    (``nohup``, or ``flowrl train … &`` in a script), as ``flowrl serve`` leaves them
    (:data:`~flowrl_deploy.signals.KEPT_IF_IGNORED`). A second Ctrl-C interrupts at once; a repeat of
    another signal is ignored, since a scheduler may deliver its stop twice (to the process, and
    forwarded by ``srun``) and escalates with SIGKILL, never with another one. Installed only on the
    main thread."""

    SIGNALS = STOP_SIGNALS + SCHEDULER_NOTICES

    def __init__(self, enabled: bool) -> None:
        self.requested = False
        self.signum: int | None = None
        self._restore: Callable[[], None] = lambda: None
        if enabled and threading.current_thread() is threading.main_thread():
            self._restore = install_stop_handlers(self._handler, self.SIGNALS)

    def _handler(self, signum: int, frame: object) -> None:
        if not self.requested:
            self.requested, self.signum = True, signum
        elif signum == signal.SIGINT:
            raise Interrupted(signum)

    def restore(self) -> None:
        self._restore()


def policy_spec(info: EnvInfo, cfg: TrainConfig) -> PolicySpec:
    """The policy spec of a run on an environment."""
    return PolicySpec(
        obs_dim=info.obs_dim,
        act_dim=info.act_dim,
        action_low=tuple(float(x) for x in info.action_low),
        action_high=tuple(float(x) for x in info.action_high),
        hidden=cfg.hidden,
        solver=cfg.solver,
        flow_steps=cfg.flow_steps,
        env_id=info.env_id,
        obs_layout=info.obs_layout,
        action_names=info.action_names,
        control_period_s=info.control_period_s,
    )


def resumed_spec(spec: PolicySpec, checkpoint: Path) -> PolicySpec:
    """A resumed run's spec: the env's, keeping the names (obs_layout, action_names) the checkpoint's policy
    records, so that every checkpoint of a run has one contract hash. A newer flowrl that names what an older
    one did not (the actuators of HumanoidBench's h1-* since session 10) would otherwise change it partway
    through the run, and its later exports would no longer hot-swap with, or match the hash pinned for, its
    earlier ones. When the sizes differ the names cannot fit: the weights will not either, and the restore says so."""
    saved = read_spec(checkpoint)
    if (saved.obs_dim, saved.act_dim) != (spec.obs_dim, spec.act_dim):
        return spec
    return replace(spec, obs_layout=saved.obs_layout, action_names=saved.action_names)


def train(
    cfg: TrainConfig,
    resume: str | Path | None = None,
    progress: bool = True,
    *,
    stop_on_signal: bool = False,
    on_start: Callable[[], None] | None = None,
) -> TrainResult:
    """Run FlowRL as ``cfg`` says, into ``cfg.out``.

    With ``resume`` (a checkpoint or run directory), continue that run in its own directory; pass
    its config, ``resume_config(resume)``, as ``cfg``, changed at most in ``RESUME_OVERRIDES``
    (another change is a :class:`ConfigError` raised before any file is touched). ``on_start()`` is
    called once every check has passed and every output is made, before the first step (a caller's
    warnings then never precede a refusal). With ``stop_on_signal`` (``flowrl train``), the first
    stop signal (SIGTERM, SIGUSR1, SIGUSR2, or Ctrl-C or SIGHUP unless ignored at start) ends the run after the
    current step with a saved ``last`` checkpoint and ``TrainResult.interrupted``, and a second Ctrl-C
    raises :class:`TrainingInterrupted` at once; otherwise Ctrl-C raises ``KeyboardInterrupt`` as usual.
    The run locks its directory while it runs (:class:`~flowrl_deploy.train.run_lock.RunLock`):
    a second run on it is refused. What the user should know is logged as a warning on the
    ``flowrl.train`` logger just before ``on_start`` (``flowrl train`` prints the same lines): a resume
    whose replay buffer was not saved, that moves ``last`` to the newest complete checkpoint, or whose
    checkpoint's config lacks fields (their defaults are named), a new run given a tau over one half (what
    it does since ``config_version`` 2, and the tau that keeps that share, as a script of before meant it:
    :func:`~flowrl_deploy.train.config.new_run_tau_note`), a run that makes no gradient update, a
    directory that could not be locked.

    ``cfg.threads`` sets torch's thread count for the run only: the caller's comes back when it returns
    or raises. A run seeds torch's global RNG with ``cfg.seed`` (``torch.manual_seed``), as a seeded run
    must; that stays after it.
    """
    threads = torch.get_num_threads()
    try:
        return _train(cfg, resume, progress, stop_on_signal, on_start)
    finally:
        torch.set_num_threads(threads)


def _train(
    cfg: TrainConfig,
    resume: str | Path | None,
    progress: bool,
    stop_on_signal: bool,
    on_start: Callable[[], None] | None,
) -> TrainResult:
    run = _prepare_run(cfg, resume, progress)
    counters = run.counters
    stop = _StopOnSignal(stop_on_signal)
    try:
        _run_loop(run, stop, on_start)
    except Interrupted as exc:  # a second Ctrl-C: at once, between any two lines
        raise TrainingInterrupted(exc.signum, run.run_dir, run.last_checkpoint) from None
    except FlowRLError as exc:  # the policy diverged, or a checkpoint or metrics file could not be written
        last = run.last_checkpoint
        saved = f"the last checkpoint saved is {last}" if last else "no checkpoint was saved"
        if last and isinstance(exc, (CheckpointError, MetricsError)):  # a full disk, a quota: nothing to change
            run_dir = shlex.quote(str(run.run_dir))
            saved += f"; once the run's folder can be written again, continue with --resume {run_dir}"
        raise FlowRLError(f"{exc}; training stopped at env step {counters.env_steps}, and {saved}") from exc
    return TrainResult(run.run_dir, run.last_checkpoint, counters, interrupted=stop.requested, stop_signal=stop.signum)


def _run_loop(run: _Run, stop: _StopOnSignal, on_start: Callable[[], None] | None) -> None:
    """Train until ``run.cfg.steps`` or a stop, and save; then close the run's envs and files, whatever
    raised (a failure to close them is raised only when nothing else is: it must not hide that error). A metrics
    row that cannot be written stops the run too, after saving its state at that step."""
    cfg, env, agent, replay, counters = run.cfg, run.env, run.agent, run.replay, run.counters
    low, high = env.info.action_low, env.info.action_high
    first_step = counters.env_steps
    metrics: dict[str, torch.Tensor] = {}
    try:
        for warning in run.warnings:
            log.warning("%s", warning)
        if on_start is not None:
            on_start()
        obs: np.ndarray | None = None  # None: this iteration starts a new episode
        episode_return, episode_length, unstable_in_a_row = 0.0, 0, 0
        run.rates.restart(counters.env_steps, agent.updates)  # the first row's rates leave the start-up out
        while counters.env_steps < cfg.steps and not stop.requested:
            if obs is None:
                try:
                    obs = env.reset(episode_seed(cfg.seed, counters.episodes))
                except SimulationError as exc:  # an initial state the simulation cannot start from
                    unstable_in_a_row = _end_unstable_episode(run, exc, 0.0, 0, unstable_in_a_row)
                    continue
                episode_return, episode_length = 0.0, 0
            # ALGO LOGIC: act (uniform random during the warm-up), store, update once
            if counters.env_steps < cfg.start_steps:
                action = run.action_rng.uniform(low, high).astype(np.float32)
            else:
                action = agent.act(obs)
                if not np.isfinite(action).all():
                    raise FlowRLError(
                        f"the policy returned a NaN/infinite action at env step {counters.env_steps}: training "
                        "diverged (lower --lr?)"
                    )
            try:
                next_obs, reward, terminated, truncated = env.step(action)
            except SimulationError as exc:  # no transition to store: the episode ends at its last good state
                unstable_in_a_row = _end_unstable_episode(run, exc, episode_return, episode_length, unstable_in_a_row)
                obs = None
                continue
            replay.add(obs, action, reward, next_obs, terminated)
            counters.env_steps += 1
            episode_return += reward
            episode_length += 1
            obs = next_obs
            if terminated or truncated:
                unstable_in_a_row = 0
                run.bar.episode_return = episode_return
                _log_episode(run, episode_return, episode_length, terminated=terminated, unstable=False)
                obs = None  # reset after this step's update, evaluation and save
            if counters.env_steps >= cfg.start_steps and replay.size >= cfg.updates_from:
                # merged: the actor's losses come only every policy_delay-th update, and stay until the next
                metrics.update(agent.update(replay.sample(cfg.batch_size)))
            _after_step(run, metrics, stopped=lambda: stop.requested)
        if counters.env_steps > first_step:  # no step taken (a stop before the first): nothing new to save
            run.save()
    except (MetricsError, SimulationError):  # a row that failed (an NFS hiccup, EIO), or a task that cannot be
        # trained on (MAX_UNSTABLE_IN_A_ROW), is no reason to lose the steps since the last checkpoint
        if counters.env_steps > first_step:
            with contextlib.suppress(FlowRLError):  # a full disk fails it too: the metrics' error is the one to say
                run.save()
        stop.restore()
        run.close(raise_errors=False)
        raise
    except BaseException:
        stop.restore()
        run.close(raise_errors=False)
        raise
    else:
        stop.restore()
        run.close()


@dataclass
class _Run:
    """What a run's loop works on, made ready by :func:`_prepare_run`."""

    cfg: TrainConfig
    run_dir: Path
    lock: RunLock
    spec: PolicySpec
    env: Env
    eval_env: Env
    agent: FlowRL
    replay: ReplayBuffer
    action_rng: np.random.Generator  # warm-up actions
    counters: Counters
    checkpoints: RunCheckpoints
    logger: MetricsLogger
    bar: Progress
    last_checkpoint: Path | None
    """The last checkpoint saved, or resumed from."""
    rates: RateMeter
    """The logged rates' meter: restarted at each row of them and after each evaluation."""
    warnings: list[str]
    """What the user should know before the first step, logged on ``flowrl.train``."""
    disk_checked_at: int = -1
    """The env step of the last save whose disk's free space was checked (:func:`disk_space_note`)."""

    def save(self, best: bool = False) -> None:
        def write(path: Path) -> Path:
            return save_training_checkpoint(
                path, self.spec, self.cfg, self.agent, self.replay, self.action_rng,
                env_steps=self.counters.env_steps, episodes=self.counters.episodes,
                evaluation=self.counters.evaluation(), runtime=run_numerics(self.agent.device),
            )  # fmt: skip

        try:
            saved = self.checkpoints.save(self.counters.env_steps, write, best=best)
        finally:  # written, even where its links then failed to move: a resume continues it
            self.last_checkpoint = self.checkpoints.written or self.last_checkpoint
        steps = self.counters.env_steps
        if steps < self.cfg.steps and self.disk_checked_at != steps and (note := disk_space_note(saved)):
            self.bar.clear()
            log.warning("%s", note)
        self.disk_checked_at = steps  # once a step (`best`, then the periodic save, write one), and not at the end

    def close(self, raise_errors: bool = True) -> None:
        try:
            self.bar.update(self.counters.env_steps, self.agent.updates, force=True)
            self.bar.close()
            self.env.close()
            self.eval_env.close()
            self.logger.close(raise_errors)  # last: a failed flush of its files must not keep the envs open
        finally:
            self.lock.release()  # the run's files are written: another run may take them


def _prepare_run(cfg: TrainConfig, resume: str | Path | None, progress: bool) -> _Run:
    """Lock the run directory, check the run's outputs and settings, make its envs and networks, restore
    a resumed run's state, and make every output (or find it unwritable) before step 0, or the first step
    after a resume. A refusal unlocks, and removes the folders the lock made."""
    start, behind = (None, None) if resume is None else run_resume_point(resume)  # as its run names it
    run_dir = Path(cfg.out) if start is None else run_to_resume(start)
    if run_dir.exists() and not run_dir.is_dir():
        raise FlowRLError(f"--out {run_dir} is a file, not a directory; choose a directory for the run")
    lock = RunLock(run_dir, new_run=start is None)
    try:  # what the checks below read, no other run may change now
        return _prepare_locked_run(cfg, resume, start, behind, run_dir, lock, progress)
    except BaseException:
        lock.release(undo=True)
        raise


def _prepare_locked_run(
    cfg: TrainConfig,
    resume: str | Path | None,
    start: Path | None,
    behind: str | None,
    run_dir: Path,
    lock: RunLock,
    progress: bool,
) -> _Run:
    """:func:`_prepare_run`'s work once it holds the run's lock; ``behind``: why ``last`` is moved to
    ``start`` (:func:`~flowrl_deploy.checkpoint.resume_point`'s warning)."""
    if start is not None:  # cfg.out aside: a resumed run stays in its own directory, and records where it lies
        run_to_resume(start)  # again, under the lock: another run may have saved since
        if not lock.unlocked:  # first: on a tight quota, a killed save's partial checkpoint fails the next save
            remove_leftovers(run_dir)
        saved = resume_config(start)
        document = read_document(start)
        converted = tau_conversion(document.get("config"), str(start / DOCUMENT_FILE))
        settings = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "out"}
        check_resume_settings(settings, saved, flags=False)
        # the links first: a run killed in its final save's window is finished, with last (and best) behind
        repaired = RunCheckpoints(run_dir, cfg.save_every).repair(start, behind)
        check_unfinished(resume, cfg.steps, flags=False)
        replay_empty, defaulted = resume_warnings(start, cfg, saved)
        cfg = cfg.override(out=str(run_dir), env=saved.env)  # env: the same id, maybe spelled otherwise
    else:
        check_new_run_dir(run_dir)  # a run's (a retry of one killed before its first checkpoint), or new
        if not lock.unlocked:
            remove_leftovers(run_dir)
        repaired, converted, document, replay_empty, defaulted = [], None, None, None, None
    if cfg.threads:
        check_thread_count("--threads", cfg.threads)
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    changed = None if document is None else numerics_change(document.get("runtime"), run_numerics(device))
    torch.manual_seed(cfg.seed)
    env = make_env(cfg.env, cfg.seed)
    eval_env = make_env(cfg.env, (cfg.seed + 1) % 2**32)
    try:  # until the run owns them, a refusal below must close the envs
        spec = policy_spec(env.info, cfg)
        if start is not None:
            spec = resumed_spec(spec, start)
        shortfall = memory_shortfall(spec, cfg, device)
        if shortfall:
            raise ConfigError(f"--buffer-size {cfg.buffer_size} and --hidden {cfg.hidden} need {shortfall}")
        agent = FlowRL(spec, cfg, device)
        replay = ReplayBuffer(
            spec.obs_dim, spec.act_dim, cfg.buffer_size, cfg.seed, cfg.recent_fraction, cfg.recent_window
        )
        action_rng = np.random.default_rng(cfg.seed)
        counters = Counters()
        if resume is not None:
            try:
                counters = Counters.restored(*restore_training(start, agent, replay, action_rng))
            except CheckpointError as exc:  # its files are whole (resume_point): its contents are not
                raise CheckpointError(f"{exc}; {set_aside_advice(start)}") from exc
        checkpoints = RunCheckpoints(run_dir, cfg.save_every)
        cfg.save(run_dir)
        logger = MetricsLogger(
            run_dir,
            resume_step=None if resume is None else counters.env_steps,
            resume_episodes=None if resume is None else counters.episodes,
        )
        bar = Progress(cfg.steps, counters.env_steps, agent.updates, enabled=progress)
    except BaseException:
        env.close()
        eval_env.close()
        raise
    rates = RateMeter(counters.env_steps, agent.updates)
    # converted: an old run's tau, read anew; changed: other threads or device than the checkpoint's
    # a new run's tau over one half: what a script of before config_version 2 meant by it is told (not a resume's)
    tau_note = new_run_tau_note(cfg) if start is None else None
    said = (
        replay_empty, *repaired, defaulted, tau_note, no_update_warning(cfg), recent_window_warning(cfg), converted,
        changed,
    )  # fmt: skip
    warnings = [text for text in said if text]
    if symlinks_refused(checkpoints.dir):  # said once, before training (a save falls back to them silently)
        warnings.append(
            f"{checkpoints.dir} cannot hold symbolic links (a FAT, exFAT or CIFS drive?): last and best are files "
            "naming their checkpoint, which an older flowrl-deploy cannot read"
        )
    if lock.unlocked:
        warnings.append(
            f"cannot lock the run directory {run_dir} ({lock.unlocked}): it runs "
            "unlocked, so a second flowrl train on it is not refused"
        )
    return _Run(
        cfg, run_dir, lock, spec, env, eval_env, agent, replay, action_rng, counters, checkpoints, logger, bar, start,
        rates, warnings,
    )  # fmt: skip


def no_update_warning(cfg: TrainConfig) -> str | None:
    """The warning of a run of ``cfg`` that makes no gradient update (they need the warm-up over and a
    batch in the buffer), or None when it makes some."""
    if cfg.start_steps > cfg.steps:
        why = f"--start-steps {cfg.start_steps} > --steps {cfg.steps}: every step is random warm-up"
    elif cfg.batch_size > cfg.steps:
        why = f"--batch-size {cfg.batch_size} > --steps {cfg.steps}: the buffer never holds a batch"
    else:
        return None
    return f"{why}, so no gradient update will run and the checkpoint holds the untrained policy"


def recent_window_warning(cfg: TrainConfig) -> str | None:
    """The warning of a run whose newest window holds its whole replay buffer (the recent share of each batch is
    then uniform once the buffer is full, though ``--recent-fraction`` asks for recent rows), or None."""
    if cfg.recent_fraction == 0 or cfg.recent_window < cfg.buffer_size:
        return None
    return (
        f"--recent-window {cfg.recent_window} >= --buffer-size {cfg.buffer_size}: the newest window is the whole "
        "buffer, so once the buffer is full the recent share of each batch "
        f"(--recent-fraction {cfg.recent_fraction:g}) is drawn uniformly too, as with --recent-fraction 0"
    )


def run_numerics(device: torch.device) -> dict[str, object]:
    """What a run's floating-point results depend on besides its seed and versions, as each checkpoint
    records it (``runtime``): torch's CPU thread count (the default, 0, is the machine's core count)
    and the device (a GPU's model too); 1 and 2 threads gave different updates from the fifth on."""
    numerics: dict[str, object] = {"device": device.type, "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        numerics["gpu"] = torch.cuda.get_device_name(device)
    return numerics


def numerics_change(saved: object, now: dict[str, object]) -> str | None:
    """The warning of a resume whose thread count or device is not the checkpoint's (``saved``, its
    ``runtime``; a checkpoint written before it was recorded has none, and is not warned about)."""
    if not isinstance(saved, dict) or saved == now:
        return None

    def said(numerics: dict) -> str:
        threads = numerics.get("torch_threads")
        gpu = f" ({numerics['gpu']})" if numerics.get("gpu") else ""
        return f"{threads} torch thread{'s' * (threads != 1)} on {numerics.get('device')}{gpu}"

    return (
        f"resuming with {said(now)} where the checkpoint trained with {said(saved)}: the continuation will not "
        "be bit-identical to an uninterrupted run (--threads and --device change torch's float results)"
    )


def _log_episode(run: _Run, episode_return: float, length: int, *, terminated: bool, unstable: bool) -> None:
    """Count a training episode that just ended and log its row (at the env step it ended)."""
    run.counters.episodes += 1
    run.logger.log(
        run.counters.env_steps,
        {
            EPISODE_RETURN: episode_return,
            "charts/episode_length": length,
            "charts/episode_terminated": float(terminated),
            EPISODE_UNSTABLE: float(unstable),
        },
    )


def _end_unstable_episode(run: _Run, exc: SimulationError, episode_return: float, length: int, in_a_row: int) -> int:
    """End the episode that a reset or step the simulation could not go on from (``exc``) cut short after
    ``length`` stored steps: say so, and log it (its return is that of those steps). Returns the count of
    such episodes in a row that stored no step, this one's ``in_a_row`` before; once it reaches
    :data:`MAX_UNSTABLE_IN_A_ROW`, raises :class:`SimulationError` instead (the loop saves, then stops)."""
    in_a_row = 0 if length else in_a_row + 1
    run.bar.clear()  # the warning goes on a line of its own, not into the live progress line
    log.warning(
        "episode %d cut short after %s, at env step %d: %s",
        run.counters.episodes + 1, counted(length, "step"), run.counters.env_steps, exc,
    )  # fmt: skip
    _log_episode(run, episode_return, length, terminated=False, unstable=True)
    if in_a_row >= MAX_UNSTABLE_IN_A_ROW:
        raise SimulationError(
            f"the simulation became unstable before the first step of {in_a_row} episodes in a row, the last at env "
            f"step {run.counters.env_steps} ({exc}): the task cannot be trained on as it is"
        )
    return in_a_row


def _after_step(run: _Run, metrics: dict[str, torch.Tensor], stopped: Callable[[], bool]) -> None:
    """What follows an env step: log the latest value of every loss (the critics' from the last
    update, the actor's from the last actor step, which comes only every ``policy_delay``-th update,
    so that no alignment of ``log_every`` leaves them out) and the rates since the previous row,
    evaluate, save a periodic checkpoint, redraw the progress line."""
    cfg, agent, step = run.cfg, run.agent, run.counters.env_steps
    if step % cfg.log_every == 0 and metrics:
        sps, ups = run.rates.rates(step, agent.updates)
        run.rates.restart(step, agent.updates)
        run.logger.log(
            step,
            {
                **{f"losses/{k}": float(v) for k, v in metrics.items()},
                "charts/env_steps_per_s": sps,
                "charts/updates_per_s": ups,
            },
        )
    if cfg.eval_every and step % cfg.eval_every == 0:
        _evaluate_and_log(run, step, stopped)
        run.rates.restart(step, agent.updates)  # the next row's rates are training's alone
    if cfg.save_every and step % cfg.save_every == 0:
        run.save()
        run.rates.restart(step, agent.updates)  # and the save's time (a --save-replay buffer: seconds)
    run.bar.update(step, agent.updates)


def _evaluate_and_log(run: _Run, step: int, stopped: Callable[[], bool]) -> None:
    """Evaluate, log it, and save a new best as ``best``. A stop (``stopped()``) during the evaluation
    ends it after the current episode, so that a scheduler's grace period is not spent on it; that
    partial evaluation is neither logged nor compared for ``best``, and a stop before it skips it."""
    evaluation = _evaluations(run, step, stopped)
    if evaluation is None:
        return
    result, zero_noise = evaluation
    for label, checked in (("", result), (" from a0 = 0", zero_noise)):
        if note := checked.unstable_note():
            run.bar.clear()
            log.warning("evaluation at env step %d%s: %s", step, label, note)
    counters = run.counters
    run.logger.log(
        step,
        {
            "charts/eval_return": result.mean,
            "charts/eval_return_std": result.std,
            "charts/eval_episode_length": float(np.mean(result.lengths)),
            "charts/eval_terminated": float(np.mean(result.terminated)),  # the evaluation's fall rate
            "charts/eval_unstable": float(np.mean([bool(reason) for reason in result.unstable])),
            "charts/eval_return_deterministic": zero_noise.mean,
        },
    )  # first: an evaluation whose row fails is not one a checkpoint saved at the stop records
    counters.last_eval_return = run.bar.eval_return = result.mean
    counters.last_eval_step = step
    # a policy whose evaluation blew the simulation up is no candidate, whatever its cut episodes returned
    counters.last_eval_unstable = any(result.unstable) or any(zero_noise.unstable)
    is_best = result.mean >= counters.best_eval_return and not counters.last_eval_unstable
    if is_best:
        counters.best_eval_return = result.mean
        run.save(best=True)


def _evaluations(run: _Run, step: int, stopped: Callable[[], bool]) -> tuple[EvalResult, EvalResult] | None:
    """The evaluation of step ``step`` with sampled noise and from a0 = 0, or None when a stop came
    before or during them (each ends after its current episode then)."""
    results = []
    for deterministic in (False, True):
        if stopped():
            return None
        result = _evaluate(run.agent, run.eval_env, run.cfg, step, deterministic, stopped)
        if len(result.returns) < run.cfg.eval_episodes:
            return None
        results.append(result)
    return results[0], results[1]


def _evaluate(
    agent: FlowRL,
    eval_env: Env,
    cfg: TrainConfig,
    step: int,
    deterministic: bool = False,
    stop: Callable[[], bool] | None = None,
) -> EvalResult:
    """Evaluate the current policy on the evaluation env, with noise of its own (training's RNG is
    untouched), or from a0 = 0 when ``deterministic`` (what a ``--deterministic`` export serves);
    ``stop`` as :func:`evaluate` takes it."""
    noise_seed = episode_seed(cfg.seed, step, stream=EVAL_NOISE_STREAM)
    act = actor_act_fn(agent.actor, seed=noise_seed, deterministic=deterministic)
    return evaluate(act, eval_env, cfg.eval_episodes, seed=cfg.seed, stop=stop)
