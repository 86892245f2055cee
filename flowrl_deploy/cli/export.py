"""`flowrl export`: a checkpoint's N-step sampler → one verified ONNX graph (or a sweep over N)."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from flowrl_deploy.checkpoint import BEST, LAST, read_spec, resolve_checkpoint
from flowrl_deploy.cli._common import (
    JsonReport,
    Solver,
    check_report,
    check_writable,
    user_errors,
)
from flowrl_deploy.errors import FlowRLError
from flowrl_deploy.export.config import DTYPES, MAX_BATCH, ExportConfig, sampler_notes
from flowrl_deploy.export.exporter import (
    ExportReport,
    check_export_opset,
    check_export_output,
    check_run_output,
    output_file,
    sweep_file_flag,
)
from flowrl_deploy.spec import MAX_FLOW_STEPS

DEFAULT = ExportConfig()  # the single source of the defaults below
DType = Enum("DType", {dtype: dtype for dtype in DTYPES}, type=str)  # the --dtype choices, from export's own tuple
DEFAULT_DTYPE = DType(DEFAULT.dtype)


def parse_steps(text: str) -> list[int]:
    """'10' → [10]; '1,2,5,10,20' → [1, 2, 5, 10, 20]; an empty item ('1,,2', '1,2,') is refused."""
    if text.strip() and not all(part.strip() for part in text.split(",")):
        raise FlowRLError(f"--steps {text!r} has an empty item: give numbers separated by commas, such as 1,2,5,10,20")
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not all(part.isascii() and part.isdigit() for part in parts):  # int() takes '1_0', '+2' and '٣'
        raise FlowRLError(f"--steps takes a number or a comma list such as 1,2,5,10,20, got {text!r}")
    steps = [int(part) for part in parts]
    if not steps or min(steps) < 1 or max(steps) > MAX_FLOW_STEPS:
        raise FlowRLError(f"--steps must be integers from 1 to {MAX_FLOW_STEPS}, got {text!r}")
    if len(set(steps)) < len(steps):
        raise FlowRLError(f"--steps lists a value twice: {text!r}")
    return steps


def parse_batch(text: str) -> int | str:
    if text == "dynamic":
        return text
    if text.isascii() and text.isdigit() and 0 < int(text) <= MAX_BATCH:  # not '٣' (int() reads it as 3)
        return int(text)
    raise FlowRLError(f"--batch takes 'dynamic' or an integer from 1 to {MAX_BATCH}, got {text!r}")


def check_outputs(out: Path, onnx_files: list[Path], json_out: Path | None, checkpoint_dir: Path) -> None:
    """Refuse, before the first export, every output that cannot be written or would destroy
    something: each file of a sweep (not only the first), and the --json report."""
    for path in onnx_files:
        flag = sweep_file_flag("--out", out, path)
        if path.is_dir():
            raise FlowRLError(f"{flag} {path} is a directory; give --out another file name")
        check_writable(flag, path)
        check_export_output(flag, path, checkpoint_dir, rename="--out")  # the checks export_checkpoint makes
    if json_out is not None:
        # check_report (last) repeats check_writable, but the order of the refusals matters: a path in
        # the checkpoint, then a file of the run, then the ONNX file, then a file that is not a report.
        check_writable("--json", json_out)
        check_run_output("--json", json_out, checkpoint_dir)
        # Not check_report's ``inputs``: it resolves them as files to read, through links, while an
        # ONNX output, like the report, replaces a link at its path (--out x --json x, x a link).
        if json_out.resolve() in [f.resolve() for f in onnx_files]:
            raise FlowRLError(f"--json {json_out} is also the ONNX file to write; give the report another name")
        check_report("--json", json_out)


def check_exists(checkpoint: Path) -> None:
    """Refuse a missing CHECKPOINT, saying what to give; a missing `best` beside a run's `last` has not
    been written yet: a run writes it at its first evaluation."""
    if os.path.lexists(checkpoint):
        return
    why = ""
    if checkpoint.name == BEST and os.path.lexists(checkpoint.parent / LAST):
        why = f"; {BEST} appears at the run's first evaluation (--eval-every): export {LAST} until then"
    raise FlowRLError(f"checkpoint not found: {checkpoint} (give a checkpoint or run directory{why})")


def stopped_sweep_note(written: list[Path], left: list[int]) -> str:
    """The line a sweep that failed or was interrupted prints on stderr: the files it had written, and
    the N it had not exported."""
    names = [str(path) for path in written]
    files = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    missing = f" (N={', '.join(str(n) for n in left)} {'was' if len(left) == 1 else 'were'} not exported)"
    return f"{files} {'was' if len(names) == 1 else 'were'} written before the sweep stopped{missing if left else ''}"


@user_errors
def export(
    checkpoint: Annotated[
        Path,
        typer.Argument(metavar="CHECKPOINT", help="Checkpoint directory, or a run directory (its last checkpoint)."),
    ],
    out: Annotated[str, typer.Option("--out", "-o", metavar="<path>", help="The ONNX file to write.")] = "policy.onnx",
    steps: Annotated[
        str | None,
        typer.Option(
            help="Flow steps N unrolled in the graph, 1-1000 (default: the checkpoint's training N; another N samples "
            "a different policy, whose return --report compares); a comma list (1,2,5,10,20) exports one file per "
            "N, named after --out with .nN before its suffix (policy.n10.onnx)."
        ),
    ] = None,
    solver: Annotated[Solver | None, typer.Option(help="ODE solver; default: the checkpoint's.")] = None,
    opset: Annotated[
        int,
        typer.Option(
            help="ONNX opset: 13 to the newest onnx and onnxruntime both run (--no-verify: onnx's newest); "
            "below 17 LayerNormalization is spelled out in basic ops (TensorRT 8.5: 13 to 16)."
        ),
    ] = DEFAULT.opset,
    batch: Annotated[str, typer.Option(help="'dynamic' batch axis, or a fixed batch size, 1-65536.")] = str(
        DEFAULT.batch
    ),
    deterministic: Annotated[
        bool, typer.Option("--deterministic", help="No noise input: start from a0 = 0 (one action per observation).")
    ] = DEFAULT.deterministic,
    dtype: Annotated[
        DType,
        typer.Option(
            help="fp32; int8 (the wide layer in 8-bit blocks) or fp16 (the sampler in float16, for GPU "
            "providers; --opset 17+): looser parity, reported, with fp32's row beside it in --report."
        ),
    ] = DEFAULT_DTYPE,
    optimize: Annotated[
        bool, typer.Option("--optimize/--no-optimize", help="Structural optimizations (obs share of layer 1 once).")
    ] = DEFAULT.optimize,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Check the graph against the torch sampler before writing it.")
    ] = DEFAULT.verify,
    report: Annotated[
        bool,
        typer.Option(
            "--report",
            help="Tabulate the latency of one call (batch 1, or the graph's fixed batch), and the return "
            "with --episodes, for each N.",
        ),
    ] = False,
    episodes: Annotated[int, typer.Option(help="With --report: evaluation episodes per N (0: latency only).")] = 0,
    env: Annotated[str | None, typer.Option(help="With --report: env id (default: the policy's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the verification inputs and the evaluation.")] = DEFAULT.seed,
    json_out: Annotated[
        str | None,
        typer.Option(
            "--json",
            metavar="<path>",
            help="Also write the report(s) as JSON here ('-': on stdout, the summary lines then on stderr).",
        ),
    ] = None,
) -> None:
    """Export CHECKPOINT's flow policy as policy.onnx: obs (+ noise) → action in the env's bounds."""
    from flowrl_deploy.export import export_checkpoint
    from flowrl_deploy.export.sweep import sweep_paths

    onnx_path = output_file("--out", out, "policy.onnx")
    json_report = JsonReport(json_out, lambda value: output_file("--json", value, "report.json"))
    check_exists(checkpoint)
    checkpoint_dir = resolve_checkpoint(checkpoint)
    spec = read_spec(checkpoint_dir)
    step_list = parse_steps(steps) if steps is not None else [spec.flow_steps]
    sweep = report or len(step_list) > 1  # a table; several N write one file each (policy.n10.onnx)
    if episodes < 0:
        raise FlowRLError(f"--episodes must be >= 0 (0: latency only), got {episodes}")
    if not report and (episodes or env is not None):
        raise FlowRLError("--episodes and --env apply to the --report table only; add --report or leave them out")
    config = ExportConfig(
        steps=step_list[0],
        solver=solver.value if solver else None,
        opset=opset,
        batch=parse_batch(batch),
        deterministic=deterministic,
        dtype=dtype.value,
        optimize=optimize,
        verify=verify,
        seed=seed,
    )
    check_export_opset(config, no_verify="--no-verify")
    onnx_files = sweep_paths(onnx_path, step_list)
    check_outputs(onnx_path, onnx_files, json_report.path, checkpoint_dir)
    # a stdout that fails says the files were written, and the report still is; with --json - it holds the report alone
    printed = json_report.summary_lines()
    if sweep:
        from flowrl_deploy.export.sweep import format_sweep, sweep_steps

        written: list[Path] = []

        def wrote(result: ExportReport) -> None:  # said at once: a later N may fail or be interrupted
            written.append(result.path)
            printed.echo(result.summary())

        try:
            rows = sweep_steps(
                checkpoint,
                onnx_path,
                config,
                step_list,
                env_id=env,
                episodes=episodes,
                seed=seed,
                on_file=wrote,
                on_warning=lambda warning: typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW),
            )
        except BaseException:
            if written:
                typer.echo(stopped_sweep_note(written, step_list[len(written) :]), err=True)
            raise
        printed.echo(format_sweep(rows))
        records = [row.to_dict() for row in rows]
    else:
        result = export_checkpoint(checkpoint, onnx_path, config)
        printed.echo(result.summary())
        records = [result.to_dict()]
    # another N or solver than the training ones samples another policy: say so, unless the table compares them
    for note in sampler_notes(spec, step_list, config.solver):
        typer.echo(note, err=True)
    files = str(onnx_path) if len(onnx_files) == 1 else f"{len(onnx_files)} files ({onnx_files[0]} … {onnx_files[-1]})"
    try:
        printed = json_report.emit(records, printed)
    except FlowRLError as exc:  # a full disk: the export itself is written and verified, which a script must know
        raise FlowRLError(f"wrote {files}, but {exc}") from None
    printed.check(f"wrote {files}" + (f" and the --json report {json_report.path}" if json_report.path else ""))
