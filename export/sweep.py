"""The steps sweep: export one graph per N and tabulate latency (and return, when an env is given),
so a user can pick the cheapest N that keeps the return."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flowrl_deploy.checkpoint import read_spec, resolve_checkpoint
from flowrl_deploy.contract import NOISE_INPUT, OBS_INPUT
from flowrl_deploy.errors import counted
from flowrl_deploy.export.config import ExportConfig
from flowrl_deploy.export.exporter import (
    OUT_ARG,
    ExportReport,
    check_export_output,
    export_checkpoint,
    output_file,
    sweep_file_flag,
)
from flowrl_deploy.export.timing import Timing, time_calls
from flowrl_deploy.policy import OnnxPolicy, SeededPolicy

if TYPE_CHECKING:
    from flowrl_deploy.spec import PolicySpec
    from flowrl_deploy.train.envs import Env

log = logging.getLogger("flowrl.export")
TIMING_BUDGET_S = 0.5
"""Seconds of timed calls per N."""


@dataclass(frozen=True)
class SweepRow:
    steps: int
    report: ExportReport
    latency: Timing
    """Latency of one call (batch 1, or the graph's fixed batch) with the serving session settings (one thread)."""
    mean_return: float | None = None
    std_return: float | None = None
    evaluation: SweepEvaluation | None = None
    """What the return was measured on; None without one."""
    unstable_episodes: int | None = None
    """Of the evaluation's episodes, those an unstable simulation cut short (their return counts the steps
    before it: :attr:`~flowrl_deploy.train.evaluate.Episode.unstable`); None without an evaluation."""
    reference: SweepRow | None = None
    """A reduced --dtype row's (int8, fp16) fp32 reference: the same N exported in fp32 to a temporary
    file (deleted), timed and evaluated alike; None for an fp32 row."""

    def to_dict(self) -> dict[str, Any]:
        return self.report.to_dict() | self._figures() | {
            "evaluation": None if self.evaluation is None else asdict(self.evaluation),
            "fp32_reference": None if self.reference is None else {
                "dtype": self.reference.report.provenance["dtype"],
                "parity": self.reference.report.parity.to_dict() if self.reference.report.parity else None,
            } | self.reference._figures(),
        }  # fmt: skip

    def _figures(self) -> dict[str, float | None]:
        return {
            "p50_ms": self.latency.p50_ms,
            "p99_ms": self.latency.p99_ms,
            "mean_return": self.mean_return,
            "std_return": self.std_return,
            "unstable_episodes": self.unstable_episodes,
        }


@dataclass(frozen=True)
class SweepEvaluation:
    """What a sweep's returns were measured on: ``episodes`` episodes of ``env_id`` whose initial states
    come from ``seed``, the same for every N (the policy's noise is seeded with it too)."""

    env_id: str
    episodes: int
    seed: int

    def caption(self) -> str:
        """'return over 5 episodes on dmc:cartpole-swingup (seed 0), the same initial states for every N'."""
        return (
            f"return over {counted(self.episodes, 'episode')} on {self.env_id} (seed {self.seed}), "
            "the same initial states for every N"
        )


def sweep_paths(out: Path, steps: list[int]) -> list[Path]:
    """The file of each N: ``out`` itself for one N, else policy.onnx → policy.n1.onnx, policy.n10.onnx, …"""
    if len(steps) == 1:
        return [out]
    return [out.with_name(f"{out.stem}.n{n}{out.suffix or '.onnx'}") for n in steps]


def sweep_steps(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: ExportConfig,
    steps: list[int],
    *,
    env_id: str | None = None,
    episodes: int = 0,
    seed: int = 0,
    on_file: Callable[[ExportReport], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> list[SweepRow]:
    """Export ``checkpoint`` once per N in ``steps`` next to ``out``; time each, evaluate if ``episodes``.
    Every file's path (:func:`check_export_output`) and the env (``env_id``, or the policy's when
    evaluating; made and checked against the policy also when only latency is asked for) are checked
    before anything is written. ``on_file`` is called with each file's report as soon as the file is
    written (before its timing and evaluation), so a caller can say it even if a later N fails.
    An ``env_id`` of another task than the policy's, evaluated, is warned about through ``on_warning``
    (default: this module's logger) once the env is made and fits; each row records its
    :class:`SweepEvaluation`."""
    out = output_file(OUT_ARG, out, "policy.onnx")
    paths = sweep_paths(out, steps)
    checkpoint_dir = resolve_checkpoint(checkpoint)
    for path in paths:
        check_export_output(sweep_file_flag(OUT_ARG, out, path), path, checkpoint_dir)
    spec = read_spec(checkpoint_dir)
    env = _checked_env(spec, env_id, seed) if episodes > 0 or env_id is not None else None
    try:
        evaluation = None
        if env is not None and episodes > 0:
            from flowrl_deploy.train.evaluate import other_task_warning

            evaluation = SweepEvaluation(env_id or spec.env_id, episodes, seed)
            if env_id is not None and (warning := other_task_warning(env_id, spec.env_id)):
                (on_warning or log.warning)(warning)
        return [
            _sweep_row(checkpoint, path, replace(config, steps=n), env, evaluation, on_file)
            for n, path in zip(steps, paths, strict=True)
        ]
    finally:
        if env is not None:
            env.close()


def _checked_env(spec: PolicySpec, env_id: str | None, seed: int) -> Env:
    """The env ``env_id`` (default: the policy's own), made; closed and refused if its sizes are not the policy's."""
    from flowrl_deploy.train.envs import make_env
    from flowrl_deploy.train.evaluate import check_env_fits

    env = make_env(env_id or spec.env_id, seed)
    try:
        check_env_fits(env, (spec.obs_dim, spec.act_dim), spec.env_id)
    except BaseException:
        env.close()
        raise
    return env


def _sweep_row(
    checkpoint: str | os.PathLike[str],
    path: Path,
    config: ExportConfig,
    env: Env | None,
    evaluation: SweepEvaluation | None,
    on_file: Callable[[ExportReport], None] | None,
) -> SweepRow:
    report = export_checkpoint(checkpoint, path, config)
    if on_file is not None:
        on_file(report)
    row = _measured(report, config, env, evaluation)
    if config.dtype != "fp32":  # int8 and fp16 are judged against fp32's error and return (docs/export.md)
        with tempfile.TemporaryDirectory(prefix="flowrl-fp32-reference-") as folder:
            reference = export_checkpoint(checkpoint, Path(folder) / "fp32.onnx", replace(config, dtype="fp32"))
            row = replace(row, reference=_measured(reference, replace(config, dtype="fp32"), env, evaluation))
    return row


def _measured(
    report: ExportReport, config: ExportConfig, env: Env | None, evaluation: SweepEvaluation | None
) -> SweepRow:
    """The row of the file ``report`` wrote: its latency, and its return on ``env`` if ``evaluation``."""
    policy = OnnxPolicy(report.path, providers=["CPUExecutionProvider"])
    c = policy.contract
    batch = policy.fixed_batch or 1  # a --batch N graph only takes N rows
    feeds = {OBS_INPUT: np.zeros((batch, c.obs_dim), np.float32)}
    if policy.takes_noise:
        feeds[NOISE_INPUT] = np.zeros((batch, c.act_dim), np.float32)
    run = policy.session.run
    latency = time_calls(lambda: run(None, feeds), budget_s=TIMING_BUDGET_S)
    row = SweepRow(config.steps, report, latency)
    if env is not None and evaluation is not None:
        from flowrl_deploy.train.evaluate import evaluate

        result = evaluate(SeededPolicy(policy, evaluation.seed), env, evaluation.episodes, evaluation.seed)
        cut = sum(map(bool, result.unstable))
        row = replace(row, mean_return=result.mean, std_return=result.std, evaluation=evaluation, unstable_episodes=cut)
    return row


def format_sweep(rows: list[SweepRow]) -> str:
    """A table: N, p50/p99 latency of one call (batch 1, or the graph's fixed batch), parity error
    (absolute, in the action's units), return (mean ± std over the episodes, which a line above the
    table names)."""
    batch = rows[0].report.provenance["export_config"]["batch"] if rows else "dynamic"
    rows_per_call = "1 row (batch 1)" if batch == "dynamic" else f"{batch} rows (a --batch {batch} graph)"
    lines = [f"latency: p50/p99 of one call of {rows_per_call}"]
    evaluations = [r.evaluation for r in rows if r.evaluation is not None]
    lines += [evaluations[0].caption()] if evaluations else []
    lines.append(f"{'N':>4}  {'p50 ms':>8}  {'p99 ms':>8}  {'max |Δaction| abs':>17}  {'return':>16}  file")
    for r in rows:
        dtype = r.report.provenance["dtype"]
        lines.append(_table_line(r, f"{r.report.path}" + ("" if dtype == "fp32" else f" ({dtype})")))
        if r.reference is not None:
            lines.append(_table_line(r.reference, "fp32 reference (not written)"))
    if any(r.unstable_episodes for r in rows + [r.reference for r in rows if r.reference is not None]):
        lines.append("(k cut): k episodes an unstable simulation cut short; the return counts their steps before it")
    return "\n".join(lines)


def _table_line(r: SweepRow, file: str) -> str:
    error = f"{r.report.parity.max_abs_error_action:.2e}" if r.report.parity else "unverified"
    ret = "-" if r.mean_return is None else f"{r.mean_return:.1f}"
    if r.evaluation is not None and r.evaluation.episodes > 1:  # one episode has no spread to show
        ret += f" ± {r.std_return:.1f}"
    if r.unstable_episodes:
        ret += f" ({r.unstable_episodes} cut)"
    return f"{r.steps:>4}  {r.latency.p50_ms:>8.3f}  {r.latency.p99_ms:>8.3f}  {error:>17}  {ret:>16}  {file}"
