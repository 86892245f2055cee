"""`flowrl eval`: mean ± std episode return of a policy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from flowrl_deploy.cli._common import (
    JsonReport,
    check_report,
    user_errors,
)
from flowrl_deploy.errors import FlowRLError, counted, printable
from flowrl_deploy.noise import run_seed_problem
from flowrl_deploy.onnxfile import is_onnx_path
from flowrl_deploy.signals import interrupt_on_stop_signals, stop_name, stop_signal_of
from flowrl_deploy.spec import flow_steps_problem

if TYPE_CHECKING:
    from flowrl_deploy.train.evaluate import ActFn, Episode, EvalResult

    Policy = tuple[ActFn, str, tuple[int, int], str]
    """(act_fn, env id, (obs_dim, act_dim), sampler): what `flowrl eval` runs and how it names it."""

FROM_ZERO = ", from a0 = 0"
"""How the report names a sampler that starts every ODE at zero (--deterministic, or a deterministic graph)."""
ONNX_DEVICES = ("auto", "cpu")
"""The --device values an ONNX policy takes: `flowrl eval` runs it with onnxruntime on the CPU."""


@user_errors
def eval_command(
    policy: Annotated[
        Path,
        typer.Argument(
            metavar="POLICY", help="A checkpoint directory, a run directory (its last checkpoint), or a policy.onnx."
        ),
    ],
    episodes: Annotated[int, typer.Option(help="Episodes to run.")] = 10,
    flow_steps: Annotated[
        int | None,
        typer.Option(
            help="ODE steps N for sampling a checkpoint, 1-1000 (default: its training N); an .onnx file's N is fixed."
        ),
    ] = None,
    env: Annotated[str | None, typer.Option(help="Env id (default: the one the policy was trained on).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the episodes and of the policy's noise.")] = 0,
    device: Annotated[
        str, typer.Option(metavar="<auto|cpu|cuda>", help="A checkpoint's torch device; auto: CUDA when available.")
    ] = "auto",
    deterministic: Annotated[
        bool, typer.Option(help="Start every ODE from a0 = 0, not sampled noise (as a --deterministic export does).")
    ] = False,
    json_out: Annotated[
        str | None,
        typer.Option(
            "--json",
            metavar="<path>",
            help="Also write each episode's return, length and end as JSON here ('-': on stdout, the rest on stderr).",
        ),
    ] = None,
) -> None:
    """Run POLICY for some episodes on its task and print the mean ± std return.

    On Ctrl-C, SIGTERM or SIGHUP it prints the completed episodes' return and exits 128 + the signal: 130, 143, 129.
    """
    from flowrl_deploy.train.envs import make_env
    from flowrl_deploy.train.evaluate import EvalResult, check_env_fits, evaluate, other_task_warning

    if episodes < 1:
        raise FlowRLError(f"--episodes must be >= 1, got {episodes}")
    problem = flow_steps_problem("--flow-steps", flow_steps) if flow_steps is not None else None
    problem = problem or run_seed_problem("--seed", seed)
    if problem is not None:
        raise FlowRLError(problem)
    if not policy.exists():
        raise FlowRLError(f"policy not found: {policy} (give a checkpoint or run directory, or an ONNX file)")
    json_report = JsonReport(json_out)
    if json_report.path is not None:
        check_report("--json", json_report.path, {"POLICY": policy})

    # SIGTERM (`timeout`, a CI cancel) and SIGHUP stop it as Ctrl-C does: one line, with the completed episodes
    with interrupt_on_stop_signals():
        if is_onnx_path(policy):
            if flow_steps is not None:
                raise FlowRLError(
                    "--flow-steps does not apply to an ONNX policy; re-export with `flowrl export --steps`"
                )
            if device not in ONNX_DEVICES:
                raise FlowRLError(
                    f"--device {device} does not apply to an ONNX policy, which is evaluated with onnxruntime "
                    "on the CPU; leave --device out"
                )
            act_fn, env_id, dims, sampler = _onnx_policy(policy, seed, deterministic)
        else:
            act_fn, env_id, dims, sampler = _checkpoint_policy(policy, flow_steps, device, seed, deterministic)
        warning = None if env is None else other_task_warning(env, env_id)
        trained_on, env_id = env_id, env or env_id
        if not env_id:
            raise FlowRLError(f"{policy} does not record its env id; pass --env")
        done: list[Episode] = []
        instance = None
        try:
            # as evaluate would make it; first, so that only a runnable env is warned about
            instance = make_env(env_id, seed)
            check_env_fits(instance, dims, trained_on)
            if warning:
                typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)
            result = evaluate(act_fn, instance, episodes, seed, dims=dims, on_episode=done.append)
        except KeyboardInterrupt as exc:
            signum = stop_signal_of(exc)
            figures = f": return {_figures(EvalResult.of(done), sampler)}" if done else ""
            typer.secho(  # first: a report that cannot be written (a full disk) loses neither line nor figures
                f"interrupted ({stop_name(signum)}) after {len(done)} of {episodes} episodes on {env_id}{figures}",
                err=True,
            )
            # the exit status says the run was cut short: a standard output that fails then is not said again
            json_report.emit(_figures_of(policy, env_id, sampler, seed, done, interrupted=True))
            raise typer.Exit(128 + signum) from None
        finally:
            if instance is not None:
                instance.close()
        printed = json_report.summary_lines()  # a stdout that fails still lets the --json report be written
        printed.echo(f"{env_id}: return {_figures(result, sampler)}")
        if note := result.unstable_note():
            typer.secho(f"warning: {note}", err=True, fg=typer.colors.YELLOW)
        printed = json_report.emit(_figures_of(policy, env_id, sampler, seed, done, interrupted=False), printed)
        printed.check(f"evaluated {counted(len(done), 'episode')}{json_report.wrote()}")


def _figures_of(
    policy: Path, env_id: str, sampler: str, seed: int, done: list[Episode], interrupted: bool
) -> dict[str, object]:
    """`flowrl eval --json`'s report of the ``done`` episodes (:data:`~flowrl_deploy.cli._common.EVAL_REPORT_KEYS`)."""
    from flowrl_deploy.train.evaluate import EvalResult

    result = EvalResult.of(done) if done else None
    return {
        "policy": str(policy),
        "env_id": env_id,
        "sampler": sampler,
        "seed": seed,
        "mean_return": None if result is None else result.mean,
        "std_return": None if result is None else result.std,
        "returns": [e.total for e in done],
        "lengths": [e.length for e in done],
        "terminated": [e.terminated for e in done],
        "unstable": [e.unstable for e in done],
        "interrupted": interrupted,
    }


def _figures(result: EvalResult, sampler: str) -> str:
    """'-812.3 ± 40.1 over 2 episodes (N=8 midpoint); length 200 ± 0 steps, 0 of 2 ended by termination'."""
    return "; ".join(filter(None, (f"{result} ({sampler})", result.lengths_summary())))


def _checkpoint_policy(path: Path, flow_steps: int | None, device: str, seed: int, deterministic: bool) -> Policy:
    """(act_fn, env id, (obs_dim, act_dim), sampler) of a training checkpoint."""
    from flowrl_deploy.checkpoint import read_spec
    from flowrl_deploy.train.evaluate import checkpoint_act_fn

    spec = read_spec(path)
    act_fn = checkpoint_act_fn(path, flow_steps, device, seed, deterministic)
    sampler = f"N={flow_steps or spec.flow_steps} {spec.solver}{FROM_ZERO if deterministic else ''}"
    return act_fn, spec.env_id, (spec.obs_dim, spec.act_dim), sampler


def _onnx_policy(path: Path, seed: int, deterministic: bool) -> Policy:
    """(act_fn, env id, (obs_dim, act_dim), sampler) of an exported ONNX graph, exactly what will be
    deployed, with seeded noise."""
    from flowrl_deploy.policy import OnnxPolicy, SeededPolicy

    policy = OnnxPolicy(path, providers=["CPUExecutionProvider"])
    c = policy.contract
    dtype = policy.provenance.get("dtype")  # an int8 file's return is not its fp32 twin's: say which it is
    sampler = f"N={c.flow_steps} {c.solver}{FROM_ZERO if deterministic or not policy.takes_noise else ''}"
    sampler += f", {printable(dtype, 16)}" if isinstance(dtype, str) and dtype != "fp32" else ""
    return SeededPolicy(policy, seed, deterministic=deterministic), c.env_id, (c.obs_dim, c.act_dim), sampler
