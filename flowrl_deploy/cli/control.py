"""`flowrl control`: a simulated robot driven by a running server at a fixed rate."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Annotated

import typer

from flowrl_deploy.cli._common import (
    Connection,
    JsonReport,
    check_report,
    check_writable,
    client_warnings,
    connects,
    finite,
    user_errors,
)
from flowrl_deploy.contract import MAX_HZ, MAX_TIMEOUT_S, MIN_HZ
from flowrl_deploy.control_metrics import DEFAULT_INTERVAL_S, MAX_INTERVAL_S, MIN_INTERVAL_S
from flowrl_deploy.errors import FlowRLError


def _replaceable_textfile(path: Path) -> bool:
    """Whether ``path`` may be rewritten: missing, empty, or a file a control loop wrote (it opens with
    its first HELP line)."""
    from flowrl_deploy.control_metrics import PREFIX

    try:
        with path.open("rb") as file:
            start = file.read(64)
    except FileNotFoundError:
        return True
    except OSError:  # unreadable: nothing tells it is ours
        return False
    return not start or start.startswith(f"# HELP {PREFIX}".encode())


def _check_metrics_textfile(path: Path | None, interval_s: float | None, json_path: Path | None) -> None:
    """Refuse a --metrics-textfile that node_exporter would not read or that cannot be written, and an
    interval out of range or without the file, before connecting (not once the robot is running)."""
    if path is None:
        if interval_s is not None:
            raise FlowRLError("--metrics-interval is used only with --metrics-textfile")
        return
    if interval_s is not None and not MIN_INTERVAL_S <= interval_s <= MAX_INTERVAL_S:
        raise FlowRLError(
            f"--metrics-interval must lie in [{MIN_INTERVAL_S:g}, {MAX_INTERVAL_S:g}] s, got {interval_s:g}"
        )
    if path.suffix != ".prom":
        raise FlowRLError(
            f"--metrics-textfile {path} must end in .prom: node_exporter's textfile collector reads only *.prom files"
        )
    check_writable("--metrics-textfile", path)
    if not _replaceable_textfile(path):  # node_exporter's folder holds other collectors' files
        raise FlowRLError(
            f"--metrics-textfile {path} exists and is not a flowrl control metrics file; it is kept: give another name"
        )
    if json_path is not None and json_path.parent.resolve() / json_path.name == path.parent.resolve() / path.name:
        raise FlowRLError(f"--metrics-textfile {path} is also the --json file; give one of them another name")


def _announce_rate(explicit: bool, err: bool = False):
    """Say which rate the run uses (on stderr with ``err``: --json - leaves stdout to the report); warn (stderr)
    when an explicit --hz is not the policy's own."""

    def on_rate(hz: float, contract_hz: float | None) -> None:
        if not explicit:
            why = (
                f"the served policy's control period {1 / contract_hz:g} s"
                if contract_hz
                else "the served policy's contract has no control period"
            )
            typer.echo(f"control at {hz:g} Hz ({why})", err=err)
            return
        typer.echo(f"control at {hz:g} Hz (--hz)", err=err)
        if contract_hz and abs(hz - contract_hz) > 1e-6 * contract_hz:
            typer.secho(
                f"warning: --hz {hz:g} differs from the served policy's rate, {contract_hz:g} Hz "
                f"(control period {1 / contract_hz:g} s)",
                err=True,
                fg=typer.colors.YELLOW,
            )

    return on_rate


@user_errors
@connects
def control(
    *,
    env: Annotated[str | None, typer.Option(help="Env id; default: the served policy's.")] = None,
    hz: Annotated[
        float | None,
        typer.Option(
            parser=finite,
            help=f"Control rate, {MIN_HZ:g}-{MAX_HZ:g} Hz; default: the served policy's (its control period), else 50.",
        ),
    ] = None,
    episodes: Annotated[int, typer.Option(help="Episodes to run.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the episodes and of the session's noise (as `flowrl eval`).")] = 0,
    deadline_ms: Annotated[
        float | None,
        typer.Option(parser=finite, help="Wait this long for an action, at most the period; default: half the period."),
    ] = None,
    fallback: Annotated[
        str, typer.Option(metavar="<hold|zeros|local>", help="Action when none arrives in time: hold, zeros or local.")
    ] = "hold",
    local_model: Annotated[str, typer.Option(metavar="<path>", help="ONNX file for --fallback local.")] = "",
    max_steps: Annotated[
        int | None,
        typer.Option(help="Cap each episode at this many steps; default: the task's own length (1000 in dm_control)."),
    ] = None,
    max_misses: Annotated[
        int | None,
        typer.Option(
            help="Stop the run (exit 1) after this many ticks in a row without a fresh action (on the fallback: "
            "deadline misses, ticks while disconnected or refused); default: never."
        ),
    ] = None,
    contract_hash: Annotated[str, typer.Option(help="Pin the policy contract (hash from `flowrl inspect`).")] = "",
    connection: Connection,
    connect_timeout: Annotated[
        float,
        typer.Option(
            parser=finite,
            help=f"Seconds to wait for the server to be SERVING before giving up (at most {MAX_TIMEOUT_S}).",
        ),
    ] = 5.0,
    json_out: Annotated[
        str | None,
        typer.Option(
            "--json",
            metavar="<path>",
            help="Write the report (with raw latencies) here ('-': on stdout, the summary lines then on stderr).",
        ),
    ] = None,
    cpus: Annotated[
        str, typer.Option(help="Pin the control loop to these cores, e.g. '0', '2,3' or '0-1' (Linux); default: any.")
    ] = "",
    metrics_textfile: Annotated[
        Path | None,
        typer.Option(
            metavar="<path>",
            help="Keep the loop's figures (ticks, fallbacks by reason, round trips, ...) in this *.prom file for "
            "node_exporter's textfile collector (--collector.textfile.directory), rewritten atomically every "
            "--metrics-interval and once at the end.",
        ),
    ] = None,
    metrics_interval: Annotated[
        float | None,
        typer.Option(
            parser=finite,
            help=f"Seconds between writes of --metrics-textfile, {MIN_INTERVAL_S:g}-{MAX_INTERVAL_S:g}; "
            f"default {DEFAULT_INTERVAL_S:g}.",
        ),
    ] = None,
    rt_priority: Annotated[
        int | None,
        typer.Option(
            help="Run the control loop under SCHED_FIFO at this priority, 1-99, so that other work on its "
            "cores does not delay a tick (Linux; needs root, CAP_SYS_NICE or an rtprio limit, `ulimit -r`); "
            "default: the normal scheduler."
        ),
    ] = None,
) -> None:
    """Step a simulator at --hz with served actions; print return, latency percentiles, jitter and misses.

    Exits 1 when no tick got a fresh action or --max-misses stopped the run; on Ctrl-C, SIGTERM or SIGHUP,
    after the summary and --json report of what ran, 128 + the signal: 130, 143, 129.
    """
    from flowrl_deploy.affinity import parse_cpus, pin_to_cpus, set_realtime
    from flowrl_deploy.client import checked_contract_hash
    from flowrl_deploy.connection import checked_timeout
    from flowrl_deploy.control_metrics import ControlTextfile
    from flowrl_deploy.session import PERIOD_MISMATCH
    from flowrl_deploy.signals import held_stop_signals, interrupt_on_stop_signals, stop_name
    from flowrl_deploy.train.control import run_control

    json_report = JsonReport(json_out)
    json_path = json_report.path
    checked_timeout(connect_timeout, "--connect-timeout")  # gRPC waits forever on a deadline years away
    contract_hash = checked_contract_hash(contract_hash, "--contract-hash")
    _check_metrics_textfile(metrics_textfile, metrics_interval, json_path)
    token = connection.token_to_send()
    pin_to_cpus(parse_cpus(cpus))
    if rt_priority is not None:  # every thread, gRPC's started later included
        set_realtime(rt_priority)
    if json_path is not None:
        inputs = {
            "--local-model": local_model,
            "--tls-ca": connection.tls_ca,
            "--tls-cert": connection.tls_cert,
            "--tls-key": connection.tls_key,
        }
        check_report("--json", json_path, inputs)
    textfile = None
    if metrics_textfile is not None:
        textfile = ControlTextfile(metrics_textfile, metrics_interval or DEFAULT_INTERVAL_S)
    # SIGTERM (`timeout`, a CI cancel) and SIGHUP stop the run as Ctrl-C does, and the report is written even so
    with interrupt_on_stop_signals() as received:
        with client_warnings(skip=(PERIOD_MISMATCH,)), textfile or contextlib.nullcontext():
            # _announce_rate warns of an --hz that differs, naming it; the textfile's write failures are warnings
            report = run_control(
                connection.server,
                env,
                hz,
                episodes,
                seed,
                token=token,
                tls_ca=connection.tls_ca,
                tls_cert=connection.tls_cert,
                tls_key=connection.tls_key,
                deadline_s=None if deadline_ms is None else deadline_ms / 1e3,
                fallback=fallback,
                local_model=local_model,
                max_steps=max_steps,
                max_misses=max_misses,
                contract_hash=contract_hash,
                connect_timeout_s=connect_timeout,
                stop_on_interrupt=True,
                on_rate=_announce_rate(explicit=hz is not None, err=json_report.to_stdout),
                on_session=None if textfile is None else textfile.watch,
            )
        # the run is over: a stop from here on (`timeout`'s, late) is noted, and the report finished first
        with held_stop_signals(received):
            printed = json_report.summary_lines()  # a stdout that fails still lets the report be written
            printed.echo(report.summary())
            if note := report.seeded_note():  # on stderr, as export's notes: stdout's last line stays the summary's
                typer.echo(note, err=True)
            printed = json_report.emit(report.to_dict(), printed)
        # how the run ended comes first (its exit status too): a failed stdout is then a note on that line
        error = printed.error
        lost = "" if error is None else f" ({printed.what} was not printed: {error.strerror or error})"
        if report.interrupted or received:
            signum = received[0] if received else signal.SIGINT
            covered = "cover the completed episodes and ticks" if report.interrupted else "are those of the whole run"
            typer.secho(f"interrupted ({stop_name(signum)}): the figures above {covered}{lost}", err=True)
            raise typer.Exit(128 + signum)
        if report.watchdog:
            raise FlowRLError(f"the watchdog stopped the run: {report.watchdog} (--max-misses {max_misses}){lost}")
        if report.steps and not report.fresh_replies:
            raise FlowRLError(
                f"no tick got a fresh action: all {report.steps} fell back (deadline {report.deadline_ms:g} ms); "
                f"raise --deadline-ms or check the server{lost}"
            )
        if json_path is not None:
            printed.check(f"ran {report.steps} steps{json_report.wrote()}")
        printed.check("")
