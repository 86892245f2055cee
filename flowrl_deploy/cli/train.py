"""`flowrl train`: every option is one field of `TrainConfig` (same name, same default)."""

from __future__ import annotations

import contextlib
import logging
import shlex
import signal
from dataclasses import fields
from decimal import Decimal, InvalidOperation
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from flowrl_deploy.cli._common import ResultLines, Solver, finite, given, user_errors, warnings_to
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.train.config import CFM_WEIGHTINGS, DEVICES, TrainConfig

DEFAULT = TrainConfig()  # the single source of every default below


# Typer choice lists built from the config's own tuples, so that the two cannot drift apart
Weighting = Enum("Weighting", {name: name for name in CFM_WEIGHTINGS}, type=str)
Device = Enum("Device", {name: name for name in DEVICES}, type=str)


DEFAULT_SOLVER, DEFAULT_WEIGHTING, DEFAULT_DEVICE = (
    Solver(DEFAULT.solver),
    Weighting(DEFAULT.cfm_weighting),
    Device(DEFAULT.device),
)


def _plain(value: object) -> object:
    """An option's value as TrainConfig holds it (a choice as its text, a path as a string)."""
    return value.value if isinstance(value, Enum) else str(value) if isinstance(value, Path) else value


def _count(text: str) -> int:
    """Parser of the options that count env steps or transitions: a whole number, also written 1e6 or 1_000_000
    (RL users write 1e6; typer's int refused it)."""
    try:
        value: Decimal | None = Decimal(text)
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite() or value != value.to_integral_value():
        raise typer.BadParameter(f"{text!r} is not a whole number (write 1000000, 1_000_000 or 1e6)")
    if value.adjusted() >= 19:  # before int(): 1e999999999 would build a billion-digit integer
        raise typer.BadParameter(f"{text!r} is too large for a count (at most 18 digits)")
    return int(value)


@user_errors
def train(
    ctx: typer.Context,
    env: Annotated[str, typer.Option(help="Task: dmc:<domain>-<task> (dm_control) or a gymnasium id (h1-walk-v0).")] = (
        DEFAULT.env
    ),
    steps: Annotated[
        int | None,
        typer.Option(parser=_count, help=f"Environment steps (default {DEFAULT.steps}; with --resume: the run's own)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of torch, numpy, replay sampling and env randomness.")] = DEFAULT.seed,
    out: Annotated[
        str,  # str: '' stays ''
        typer.Option(metavar="<path>", help="Run directory (config, metrics, TensorBoard, checkpoints)."),
    ] = DEFAULT.out,
    hidden: Annotated[int, typer.Option(help="Width of every hidden layer.")] = DEFAULT.hidden,
    flow_steps: Annotated[
        int, typer.Option(help="ODE steps N of the policy while training, 1-1000.")
    ] = DEFAULT.flow_steps,
    solver: Annotated[Solver, typer.Option(help="ODE solver of the policy.")] = DEFAULT_SOLVER,
    gamma: Annotated[float, typer.Option(parser=finite, help="Discount γ.")] = DEFAULT.gamma,
    lr: Annotated[float, typer.Option(parser=finite, help="Adam learning rate.")] = DEFAULT.lr,
    tau: Annotated[
        float,
        typer.Option(
            parser=finite,
            help="Step of the target critics toward the online ones per target update: θ̄ ← (1−tau)·θ̄ + tau·θ. "
            "The paper's reference code moves them 95 % per update: pass --tau 0.95 to reproduce it. "
            "The default 0.05 differs on purpose: it learned better here (cartpole-swingup, 4 seeds, mean 745 "
            "against 571 with 0.95; docs/train.md).",
        ),
    ] = DEFAULT.tau,
    policy_delay: Annotated[int, typer.Option(help="Critic updates per actor/target update.")] = DEFAULT.policy_delay,
    lam: Annotated[float, typer.Option(parser=finite, help="λ of the flow-matching weight.")] = DEFAULT.lam,
    expectile: Annotated[
        float, typer.Option(parser=finite, help="Expectile of the value regression, 0-1 (the paper's τ; not --tau).")
    ] = DEFAULT.expectile,
    cfm_weighting: Annotated[
        Weighting,
        typer.Option(
            help="batch (default): the reference code, one scalar weight per batch; sample: per-sample weights as in "
            "the paper's Theorem 4.2, with the reference code's clamp and centring."
        ),
    ] = DEFAULT_WEIGHTING,
    batch_size: Annotated[int, typer.Option(parser=_count, help="Transitions per update.")] = DEFAULT.batch_size,
    buffer_size: Annotated[
        int, typer.Option(parser=_count, help="Replay capacity (transitions).")
    ] = DEFAULT.buffer_size,
    start_steps: Annotated[
        int, typer.Option(parser=_count, help="Random warm-up steps before updates.")
    ] = DEFAULT.start_steps,
    recent_fraction: Annotated[
        float, typer.Option(parser=finite, help="Share of a batch from the newest transitions.")
    ] = DEFAULT.recent_fraction,
    recent_window: Annotated[
        int, typer.Option(parser=_count, help="Size of the 'newest' window (transitions).")
    ] = DEFAULT.recent_window,
    eval_every: Annotated[
        int, typer.Option(parser=_count, help="Evaluate every N env steps (0: never).")
    ] = DEFAULT.eval_every,
    eval_episodes: Annotated[
        int,
        typer.Option(
            help="Episodes per evaluation, each run twice: with sampled noise (charts/eval_return, which picks "
            "`best`) and from a0 = 0 (charts/eval_return_deterministic)."
        ),
    ] = DEFAULT.eval_episodes,
    log_every: Annotated[
        int, typer.Option(parser=_count, help="Log training scalars every N env steps.")
    ] = DEFAULT.log_every,
    save_every: Annotated[int, typer.Option(parser=_count, help="Periodic checkpoint every N env steps (0: off).")] = (
        DEFAULT.save_every
    ),
    save_replay: Annotated[
        bool, typer.Option("--save-replay/--no-save-replay", help="Store the replay buffer in checkpoints.")
    ] = DEFAULT.save_replay,
    device: Annotated[Device, typer.Option(help="auto: CUDA when available.")] = DEFAULT_DEVICE,
    bf16: Annotated[bool, typer.Option("--bf16/--no-bf16", help="bfloat16 autocast.")] = DEFAULT.bf16,
    compile: Annotated[
        bool,
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the networks; CUDA graphs (--cuda-graphs) are then off. A slower start, and no "
            "faster at the default sizes (docs/train.md).",
        ),
    ] = DEFAULT.compile,
    cuda_graphs: Annotated[
        bool,
        typer.Option(
            "--cuda-graphs/--no-cuda-graphs", help="On a GPU, replay updates from CUDA graphs (not with --compile)."
        ),
    ] = DEFAULT.cuda_graphs,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0: torch's default).")] = DEFAULT.threads,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the run of this checkpoint (or run directory) with its saved settings."),
    ] = None,
    resume_if_exists: Annotated[
        bool,
        typer.Option(
            "--resume-if-exists",
            help="Resume --out if it holds a run's checkpoints, else start it: one command for a job's first "
            "start and its requeues (a finished run exits 0).",
        ),
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Live progress line.")] = True,
) -> None:
    """Train a FlowRL flow policy; writes checkpoints (last, best, periodic) under OUT/checkpoints."""
    from flowrl_deploy.train.loop import TrainingInterrupted
    from flowrl_deploy.train.loop import log as train_log
    from flowrl_deploy.train.loop import train as run_training
    from flowrl_deploy.train.resume import holds_checkpoints, plan_resume

    if resume_if_exists:
        if resume is not None:
            raise FlowRLError("--resume-if-exists resumes --out: give it or --resume, not both")
        if holds_checkpoints(Path(out)):  # what a new run on --out would refuse
            resume = Path(out)
    warnings: list[str] = []  # said once training starts: a refusal of the run comes first, alone
    if resume is not None:
        overrides = {
            name: _plain(value)
            for name, value in ctx.params.items()
            if name not in ("resume", "resume_if_exists", "progress") and given(ctx, name)
        }
        plan = plan_resume(resume, steps, overrides, finished_ok=resume_if_exists)
        if plan.finished_at is not None:  # a requeue of a finished run: nothing to do
            for text in plan.warnings:
                typer.secho(f"warning: {text}", err=True, fg=typer.colors.YELLOW)
            typer.echo(f"{resume} already finished at {plan.finished_at} env steps (--steps {plan.cfg.steps})")
            return
        cfg = plan.cfg
    else:
        options = {f.name: _plain(ctx.params[f.name]) for f in fields(TrainConfig)}  # one option per field
        cfg = TrainConfig(**{**options, "steps": DEFAULT.steps if steps is None else steps})
        # a --tau over one half is told by train() itself (new_run_tau_note), as to a library caller

    started = False

    def warn() -> None:  # the library's warnings (a resume's, a run without updates) follow the command's
        nonlocal started
        started = True
        with contextlib.suppress(OSError):  # stderr on a full disk: no reason to stop the run (as warnings_to)
            for text in warnings:
                typer.secho(f"warning: {text}", err=True, fg=typer.colors.YELLOW)

    def warning(record: logging.LogRecord) -> None:  # held until the start; said at once after it (an unstable episode)
        if started:
            typer.secho(f"warning: {record.getMessage()}", err=True, fg=typer.colors.YELLOW)
        else:
            warnings.append(record.getMessage())

    try:
        with warnings_to(train_log, warning):
            result = run_training(cfg, resume=resume, progress=progress, stop_on_signal=True, on_start=warn)
    except TrainingInterrupted as exc:  # a second Ctrl-C: one line saying what is left to resume from
        saved = (
            f"the last checkpoint saved is {exc.last_checkpoint}; continue with --resume "
            f"{shlex.quote(str(exc.run_dir))}"
            if exc.last_checkpoint
            else "no checkpoint was saved"
        )
        typer.secho(f"stopped at once by a second Ctrl-C: {saved}", err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(128 + exc.signum) from None  # this line says it all: not user_errors' "interrupted" too
    if result.interrupted:
        saved = f"last checkpoint {result.last_checkpoint}; " if result.last_checkpoint else ""
        typer.secho(
            f"interrupted at env step {result.counters.env_steps}; {saved}continue with --resume "
            f"{shlex.quote(str(result.run_dir))}",
            err=True,
            fg=typer.colors.YELLOW,
        )
        raise typer.Exit(128 + (result.stop_signal or signal.SIGINT))  # the shell's code: 130 Ctrl-C, 143 SIGTERM
    best = result.counters.best_eval_return
    printed = ResultLines()
    printed.echo(
        f"trained {result.counters.env_steps} env steps; last checkpoint {result.last_checkpoint}"
        + (f"; best eval return {best:.1f}" if best > float("-inf") else "")
    )
    printed.check(f"trained {result.counters.env_steps} env steps (last checkpoint {result.last_checkpoint})")
