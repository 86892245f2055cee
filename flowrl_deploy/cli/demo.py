"""`flowrl demo`: every stage on a small task, end to end, in a few minutes on two CPU cores.

train → checkpoint → export (the training N, or --export-steps) → `flowrl serve` in a child process → a simulated robot
in a fixed-rate closed loop against it → a report folder with plots, artifacts and figures.
The child server is stopped on every exit path, Ctrl-C, SIGTERM and SIGHUP included (``ServerProcess``); only
SIGKILL leaves it running.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from flowrl_deploy.atomic import os_reason, write_atomic
from flowrl_deploy.cli._common import client_warnings, finite, user_errors, warnings_to
from flowrl_deploy.contract import MAX_HZ
from flowrl_deploy.envid import EnvIdError, parse_env_id
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.extras import install_command, missing_modules
from flowrl_deploy.signals import interrupt_on_stop_signals, stop_name, stop_signal_of
from flowrl_deploy.spec import MAX_FLOW_STEPS


@dataclass(frozen=True)
class DemoConfig:
    """The embedded default: a task that a small flow policy learns within minutes on a CPU."""

    out: Path = Path("runs/demo")
    env: str = "dmc:cartpole-balance"
    steps: int = 15000
    hidden: int = 128
    start_steps: int = 1000
    export_steps: int = 0
    """Flow steps N of the exported sampler; 0 uses the training N (1), where a FlowRL policy acts best."""
    episodes: int = 2
    hz: float = 0.0
    """Control rate of the closed loop; 0 runs at the task's own control rate."""
    seed: int = 0

    def __post_init__(self) -> None:
        """Refuse, by its flag, a setting that would fail (or never end) only after the training."""
        for flag, value in (("--steps", self.steps), ("--episodes", self.episodes)):
            if value < 1:
                raise FlowRLError(f"{flag} must be >= 1, got {value}")
        if self.hz != 0 and not 1 <= self.hz <= MAX_HZ:  # below 1 Hz the demo's 2000 ticks take half an hour
            raise FlowRLError(f"--hz must be 0 (the task's own rate) or lie in [1, {MAX_HZ:g}], got {self.hz:g}")
        if self.export_steps != 0 and not 1 <= self.export_steps <= MAX_FLOW_STEPS:
            raise FlowRLError(
                f"--export-steps must be 0 (the training N) or lie in [1, {MAX_FLOW_STEPS}], got {self.export_steps}"
            )


def run_demo(cfg: DemoConfig, echo=typer.echo) -> dict[str, Any]:
    """Run every stage into ``cfg.out`` and return the summary that is also written to summary.json."""
    try:
        gym_task = parse_env_id(cfg.env).kind == "gym"  # gymnasium is needed for its tasks only
    except EnvIdError:
        if not missing_modules("train"):  # dm_control's task list, for a suggestion
            from flowrl_deploy.train.envs import dmc_task_ids

            parse_env_id(cfg.env, known=dmc_task_ids())  # raises again, with the suggestion
        raise
    if missing := [m for m in missing_modules("train", "export") if m != "gymnasium" or gym_task]:  # before training
        raise FlowRLError(
            f"flowrl demo trains, exports and plots: it needs {', '.join(missing)}, not installed here: "
            f"{install_command('train,export')}"
        )
    from flowrl_deploy.export import ExportConfig, export_checkpoint
    from flowrl_deploy.policy import SeededPolicy
    from flowrl_deploy.serve import ServerProcess
    from flowrl_deploy.train.algorithm import resolve_device
    from flowrl_deploy.train.checkpointing import finite_or_none
    from flowrl_deploy.train.config import TrainConfig
    from flowrl_deploy.train.control import run_control
    from flowrl_deploy.train.envs import make_env
    from flowrl_deploy.train.evaluate import evaluate
    from flowrl_deploy.train.loop import log as train_log
    from flowrl_deploy.train.loop import policy_spec, train
    from flowrl_deploy.train.resources import memory_shortfall

    if cfg.out.exists() and not cfg.out.is_dir():
        raise FlowRLError(f"--out {cfg.out} is a file, not a directory; choose a folder for the report")
    # Everything is checked before the report folder exists, so that a mistake leaves none behind:
    # the settings (--seed, --hidden, --steps), the task, and the memory training needs.
    train_cfg = TrainConfig(
        env=cfg.env,
        steps=cfg.steps,
        seed=cfg.seed,
        out=str(cfg.out / "run"),
        hidden=cfg.hidden,
        start_steps=cfg.start_steps,
        eval_every=max(cfg.steps // 4, 1),
        eval_episodes=2,
        log_every=250,
        save_every=0,
    )
    env = make_env(cfg.env, cfg.seed)
    spec = policy_spec(env.info, train_cfg)
    env.close()
    shortfall = memory_shortfall(spec, train_cfg, resolve_device(train_cfg.device))
    if shortfall:
        raise FlowRLError(f"--hidden {cfg.hidden} needs {shortfall}")
    out = _new_report_folder(cfg.out)
    train_cfg = train_cfg.override(out=str(out / "run"))
    echo(f"[1/4] train FlowRL on {cfg.env} for {cfg.steps} steps → {out / 'run'}")
    t0 = time.perf_counter()
    with warnings_to(train_log, lambda record: _warn(record.getMessage())):  # as `flowrl train` prints them
        result = train(train_cfg)
    train_s = time.perf_counter() - t0

    export_steps = cfg.export_steps or train_cfg.flow_steps
    echo(f"[2/4] export the {export_steps}-step sampler → {out / 'policy.onnx'}")
    report = export_checkpoint(result.last_checkpoint, out / "policy.onnx", ExportConfig(steps=export_steps))
    echo(report.summary())
    offline = evaluate(
        SeededPolicy(report.path, cfg.seed, providers=["CPUExecutionProvider"]), cfg.env, cfg.episodes, seed=cfg.seed
    )
    if note := offline.unstable_note():
        _warn(f"the ONNX file's evaluation: {note}")

    echo("[3/4] start `flowrl serve` in the background")
    with ServerProcess(report.path, log=out / "server.log") as server:

        def announce(hz: float, contract_hz: float | None) -> None:
            echo(f"[4/4] closed-loop control at {hz:g} Hz against {server.address}")

        # no --hz: the task's own rate, or DEFAULT_HZ for a task without a control period
        with client_warnings():
            control = run_control(
                server.address, cfg.env, hz=cfg.hz or None, episodes=cfg.episodes, seed=cfg.seed, on_rate=announce
            )
    if server.log_error is not None:  # a full disk: the server was still read to its end
        _warn(f"the server log {out / 'server.log'} is incomplete: {os_reason(server.log_error)}")

    summary = {
        "env": cfg.env,
        "train_steps": cfg.steps,
        "train_seconds": round(train_s, 1),
        "best_eval_return": finite_or_none(result.counters.best_eval_return),
        "last_eval_return": result.counters.last_eval_return,
        "onnx_eval_return": offline.mean,
        "onnx_eval_unstable_episodes": sum(map(bool, offline.unstable)),
        "served_return": control.mean_return,
        "control": {k: v for k, v in control.to_dict().items() if k != "round_trip_us"},
        "export": report.to_dict(),
        "artifacts": {
            "checkpoint": str(result.last_checkpoint),
            "onnx": str(report.path),
            "training_curve": str(out / "training_curve.png"),
            "latency_histogram": str(out / "latency_histogram.png"),
        },
    }
    _report(out, summary, control, echo)
    return summary


def _report(out: Path, summary: dict[str, Any], control: Any, echo: Callable[[str], object]) -> None:
    """Print the results table, then write the report files: a disk that fills at those loses none of the
    results, and a stdout that fails at the table (a reader gone, a full disk) leaves them in the files."""
    try:
        echo(_table(summary, control))
    except OSError:
        _write_report_files(out, summary, control)
        raise
    _write_report_files(out, summary, control)


def _write_report_files(out: Path, summary: dict[str, Any], control: Any) -> None:
    """Write summary.json and the two plots into ``out``, each atomically (a failure leaves no cut-off
    file); a file that cannot be written (a full disk) is one :class:`FlowRLError` naming it and those
    not written."""
    files = {
        "summary.json": lambda: (json.dumps(summary, indent=2, default=str) + "\n").encode(),
        "training_curve.png": lambda: _plot_training_curve(out / "run" / "metrics.jsonl"),
        "latency_histogram.png": lambda: _plot_latency(control.round_trip_us, control.hz),
    }
    for done, (name, render) in enumerate(files.items()):
        try:
            write_atomic(out / name, render())
        except FlowRLError as exc:  # write_atomic's: 'cannot write PATH: REASON'
            left = ", ".join(list(files)[done:])
            raise FlowRLError(f"{exc}; the results are in the table above; not written: {left}") from None


def _warn(text: str) -> None:
    typer.secho(f"warning: {text}", err=True, fg=typer.colors.YELLOW)


def _new_report_folder(parent: Path) -> Path:
    """A fresh, time-stamped folder under ``parent``: a second demo never touches the first's report."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(100):
        folder = parent / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
        except OSError as exc:
            raise FlowRLError(f"cannot create the report folder {folder}: {exc.strerror or exc}") from None
    raise FlowRLError(f"cannot find a free report folder name under {parent}")


def _return(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _latencies(control: Any) -> str:
    if not control.fresh_replies:
        return "no fresh replies (every tick fell back)"
    return f"{control.round_trip_p50_us:.0f} / {control.round_trip_p99_us:.0f} / {control.round_trip_p999_us:.0f} µs"


def _table(summary: dict[str, Any], control: Any) -> str:
    rows = [
        ("task", summary["env"]),
        ("training", f"{summary['train_steps']} steps in {summary['train_seconds']:.0f} s"),
        ("last eval return in training (torch)", _return(summary["last_eval_return"])),
        ("return of policy.onnx (in process)", f"{summary['onnx_eval_return']:.1f}"),
        ("return via the server (closed loop)", _return(summary["served_return"])),
        ("round trip p50 / p99 / p99.9", _latencies(control)),
        ("ticks without a fresh action", f"{control.deadline_misses} of {control.steps} ({control.miss_rate:.2%})"),
        ("report", str(Path(summary["artifacts"]["onnx"]).parent)),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _png(fig: Any) -> bytes:
    """``fig`` as PNG bytes (closed): written by the caller in one atomic write, not by savefig into the file."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def _plot_training_curve(metrics_path: Path) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label, style in (
        ("charts/episode_return", "training episodes", "o-"),
        ("charts/eval_return", "evaluation", "s-"),
    ):
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=label, markersize=3)
    ax.set(xlabel="environment steps", ylabel="return", title="FlowRL training")
    ax.legend()
    fig.tight_layout()
    return _png(fig)


def _plot_latency(round_trip_us: list[float], hz: float) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist([x / 1000 for x in round_trip_us], bins=60)
    ax.set(xlabel="round trip (ms)", ylabel="actions", title=f"Served actions at {hz:g} Hz")
    ax.set_yscale("log")
    fig.tight_layout()
    return _png(fig)


@user_errors
def demo(
    out: Annotated[
        Path, typer.Option(help="Parent folder: each run writes a new time-stamped report folder here.")
    ] = DemoConfig.out,
    env: Annotated[str, typer.Option(help="Task to train and control.")] = DemoConfig.env,
    steps: Annotated[int, typer.Option(help="Environment steps of training.")] = DemoConfig.steps,
    hidden: Annotated[int, typer.Option(help="Network width.")] = DemoConfig.hidden,
    episodes: Annotated[int, typer.Option(help="Closed-loop episodes against the server.")] = DemoConfig.episodes,
    hz: Annotated[
        float, typer.Option(parser=finite, help=f"Control rate, 1 to {MAX_HZ:g} Hz (0: the task's own).")
    ] = DemoConfig.hz,
    export_steps: Annotated[
        int, typer.Option(help="Flow steps N of the exported sampler (0: the training N).")
    ] = DemoConfig.export_steps,
    seed: Annotated[int, typer.Option(help="Seed of training, noise and episodes.")] = DemoConfig.seed,
) -> None:
    """Train → export → serve → closed-loop control on a small task, with a report folder.

    Ctrl-C, SIGTERM or SIGHUP stops it, and its server: exit 128 + the signal (130, 143, 129).
    """
    cfg = DemoConfig(
        out=out,
        env=env,
        steps=steps,
        hidden=hidden,
        episodes=episodes,
        hz=hz,
        export_steps=export_steps,
        seed=seed,
        start_steps=min(DemoConfig.start_steps, steps // 2),
    )
    try:
        # SIGTERM (`timeout`, a CI cancel, Popen.terminate()) and SIGHUP stop it as Ctrl-C does: the server too
        with interrupt_on_stop_signals():
            run_demo(cfg)
    except KeyboardInterrupt as exc:
        signum = stop_signal_of(exc)
        typer.secho(
            f"interrupted ({stop_name(signum)}); the server is stopped, and what was written is in the report "
            f"folder under {out} named above",
            err=True,
        )
        raise typer.Exit(128 + signum) from None
