"""`flowrl serve`: the gRPC action service for an exported policy (no torch needed)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from flowrl_deploy.cli._common import TOKEN_ENV, TokenFile, finite, given_token, user_errors

if TYPE_CHECKING:
    from flowrl_deploy.serve.server import PolicyServer

PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def parse_providers(text: str) -> tuple[str, ...]:
    """'cuda', 'cuda,cpu' or full onnxruntime names → provider names, in order; an unknown name is an error."""
    from flowrl_deploy.errors import FlowRLError
    from flowrl_deploy.ort import import_onnxruntime

    ort = import_onnxruntime()

    names = tuple(PROVIDER_NAMES.get(p.strip().lower(), p.strip()) for p in text.split(",") if p.strip())
    unknown = [name for name in names if name not in ort.get_all_providers()]
    if unknown:
        raise FlowRLError(
            f"unknown onnxruntime provider {unknown[0]!r}; use {', '.join(PROVIDER_NAMES)} or a full name "
            f"(available here: {', '.join(ort.get_available_providers())})"
        )
    return names


LOG_LEVELS = ("debug", "info", "warning", "error")
LogFormat = Enum("LogFormat", {kind: kind for kind in ("text", "json")}, type=str)  # systemd.LOG_FORMATS
LogLevel = Enum("LogLevel", {level: level for level in LOG_LEVELS}, type=str)


def configure_logging(log_format: str, log_level: str) -> None:
    """stderr's log lines: :func:`~flowrl_deploy.systemd.log_formatter`'s ``text`` or ``json``, at
    ``log_level`` and above. ``debug`` is flowrl's own DEBUG lines (its loggers, ``flowrl.*``);
    other libraries' stay at INFO and above, torch's at WARNING (its own default once its import has
    run: a stop during a checkpoint's export could cut that short, and its atexit cache statistics
    then followed "stopped" at INFO). With ``json``, Python's warnings (``warnings.warn``) are
    logged too (logger ``py.warnings``), so that stderr holds JSON lines alone from here on."""
    import logging

    from flowrl_deploy.systemd import log_formatter

    level = getattr(logging, log_level.upper())
    handler = logging.StreamHandler()  # under journald: <N> level prefixes (text: no timestamp of our own)
    handler.setFormatter(log_formatter(log_format))
    logging.basicConfig(level=max(level, logging.INFO), handlers=[handler])
    if level < logging.INFO:
        logging.getLogger("flowrl").setLevel(level)
    logging.getLogger("torch").setLevel(logging.WARNING)  # TORCH_LOGS still sets it, as torch's import reads it
    if log_format == "json":
        logging.captureWarnings(True)


def print_banner(server: PolicyServer) -> None:
    """Print the server's ``serving … on`` line to stdout. A stdout that cannot take it (its reader
    gone, ``| true``; a full disk) does not stop the server: stdout carries nothing else, and the log
    on stderr (which journald keeps) names the address. One warning says so, and stdout is pointed at
    the null device, so that the line left in its buffer is not written again (and fails again) at exit."""
    import logging

    from flowrl_deploy.cli._common import stdout_to_null_device
    from flowrl_deploy.serve.server import banner

    line = banner(server)
    try:
        typer.echo(line)
    except OSError as exc:  # the other commands exit 1 here (cli/_common.py's report_output_failure)
        stdout_to_null_device()
        logging.getLogger("flowrl.serve").warning(
            "cannot write the 'serving …' line to standard output (%s); serving on %s regardless",
            exc.strerror or exc,
            server.bound_address,
        )


class _StopBeforeServing(Exception):
    """A stop signal once `flowrl serve` has loaded its libraries, before serve_forever handles them."""


# Every option is a ServeConfig field, its default written out so that --help shows it (importing
# ServeConfig here would load the server package for every `flowrl` command): a test checks they agree.
@user_errors
def serve(
    model: Annotated[
        Path,
        typer.Argument(
            metavar="MODEL", help="policy.onnx from `flowrl export` (or a checkpoint: exported on the fly)."
        ),
    ],
    port: Annotated[int, typer.Option(help="TCP port; 0 picks a free one (printed).")] = 50051,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface.")] = "127.0.0.1",
    providers: Annotated[
        str,
        typer.Option(
            help="onnxruntime providers, comma-separated in order of preference: cpu, cuda, tensorrt or full "
            "onnxruntime names (e.g. 'cuda'); each must start, else the server refuses to ('cuda' fails where "
            "CUDA cannot start); default: CUDA when a GPU is present, else CPU."
        ),
    ] = "",
    threads: Annotated[int, typer.Option(help="onnxruntime intra-op threads per call, 1 to this machine's cores.")] = 1,
    cuda_graphs: Annotated[
        bool,
        typer.Option(
            "--cuda-graphs/--no-cuda-graphs",
            help="On CUDA, replay calls from CUDA graphs where the warm-up finds them exact and faster (logged).",
        ),
    ] = True,
    max_batch: Annotated[
        int,
        typer.Option(
            help="Combine concurrent requests into one call up to this many observations, 1-4096; 1 = off. "
            "A request is never split (one with more rows runs alone)."
        ),
    ] = 1,
    batch_window_us: Annotated[
        int, typer.Option(help="Wait this long for more requests after the first (µs, at most 1000000).")
    ] = 0,
    batch_workers: Annotated[int, typer.Option(help="Batches run concurrently (about one per core).")] = 2,
    workers: Annotated[
        int,
        typer.Option(
            help="gRPC handler threads of StreamAct and Act (each open StreamAct holds one); "
            "GetSpec, GetStats, Reset, Reload and health checks have a few of their own."
        ),
    ] = 128,
    token: Annotated[
        str | None,
        typer.Option(
            help="Shared secret that every call but health checks must send (the metrics port takes none).",
            envvar=TOKEN_ENV,
        ),
    ] = None,
    token_file: TokenFile = "",
    tls_cert: Annotated[str, typer.Option(metavar="<path>", help="PEM certificate chain for TLS.")] = "",
    tls_key: Annotated[str, typer.Option(metavar="<path>", help="PEM private key for TLS.")] = "",
    client_ca: Annotated[str, typer.Option(metavar="<path>", help="PEM CA: require client certificates (mTLS).")] = "",
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus metrics on this port (0: a free one); default: no metrics endpoint."),
    ] = None,
    metrics_host: Annotated[
        str | None,
        typer.Option(
            help="Address the metrics listen on (they need no token); default: --host. E.g. 0.0.0.0 to let "
            "Prometheus scrape while gRPC stays on 127.0.0.1."
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            help="Flow steps N, 1-1000, when MODEL is a checkpoint (exported on the fly; Reload and --watch keep N); "
            "default: its training flow steps. An .onnx file's N is fixed."
        ),
    ] = None,
    watch: Annotated[
        bool,
        typer.Option(
            help="Reload when what is served changes: the .onnx file, or the checkpoint a run or "
            "checkpoint directory resolves to (checkpoints/last) and its checkpoint.json."
        ),
    ] = False,
    reload: Annotated[
        bool,
        typer.Option(
            help="Take Reload calls (`flowrl reload`), which let any caller with the token swap the served "
            "model for another beside it; --no-reload refuses them, and only --watch changes the model."
        ),
    ] = True,
    max_message_bytes: Annotated[
        int,
        typer.Option(
            help="Refuse larger requests (RESOURCE_EXHAUSTED); replies are not held to it. At least the "
            "policy's largest request of one observation (about 1 KB; refused as the model loads, naming it), "
            "at most 2**31 - 1."
        ),
    ] = 1 << 20,
    max_sessions: Annotated[int, typer.Option(help="Most sessions at once (RESOURCE_EXHAUSTED beyond).")] = 4096,
    max_connections: Annotated[
        int,
        typer.Option(help="Most client connections at once; more are closed at once (each holds a file descriptor)."),
    ] = 512,
    session_idle_s: Annotated[
        float, typer.Option(parser=finite, help="Drop a session opened by Reset after this long unused (s).")
    ] = 600.0,
    cpus: Annotated[
        str, typer.Option(help="Pin the server to these cores, e.g. '1', '2,3' or '0-3' (Linux); default: any.")
    ] = "",
    rt_priority: Annotated[
        int | None,
        typer.Option(
            help="Run the server under SCHED_FIFO at this priority, 1-99, once the model is warm, so that "
            "other work on its cores does not delay a call (Linux; needs root, CAP_SYS_NICE or an rtprio "
            "limit, `ulimit -r`); default: the normal scheduler."
        ),
    ] = None,
    grace_s: Annotated[
        float,
        typer.Option(
            parser=finite,
            help="On a stop signal, how long calls in flight may take to finish (s, at most 86400); the process exits "
            "within about a second more (keep it below Kubernetes' terminationGracePeriodSeconds). A second Ctrl-C "
            "cancels them at once.",
        ),
    ] = 5.0,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            help="stderr's log lines: text (TIME LEVEL LOGGER: MESSAGE, TIME in UTC, ISO 8601, e.g. "
            "2026-11-27T00:27:09.339Z; a traceback follows on lines of its own) or json (one object a line: time, "
            "level, logger, message, and traceback as a field). Under journald each line begins with <N>, its "
            "level, and text lines have no TIME. The start-up line 'serving …' goes to stdout either way."
        ),
    ] = LogFormat.text,
    log_level: Annotated[
        LogLevel, typer.Option(help="Log this level and above; debug adds flowrl's own DEBUG lines.")
    ] = LogLevel.info,
) -> None:
    """Serve MODEL's actions over gRPC (flowrl.v1.PolicyService) until SIGTERM, SIGHUP (unless
    ignored, as under nohup) or Ctrl-C, each a graceful stop (exit 0)."""
    import threading

    from flowrl_deploy.signals import install_stop_handlers

    # A stop signal from here on is a graceful stop (exit 0), also while the imports below load grpc and
    # onnxruntime (seconds on a loaded machine): noted then, and acted on once they are loaded, before any
    # file is read. From then on it ends what runs (a --token-file read may wait on a pipe or a terminal)
    # until serve_forever takes the signals over.
    received: list[int] = []
    loaded: list[bool] = []

    def note_stop(sig: int, _: object) -> None:
        received.append(sig)
        if loaded:
            raise _StopBeforeServing

    restore = (
        install_stop_handlers(note_stop)
        if threading.current_thread() is threading.main_thread()
        else lambda: None  # serve_forever refuses to run there, in a line saying why
    )
    try:
        import logging
        import os
        import sys

        from flowrl_deploy.affinity import parse_cpus
        from flowrl_deploy.cli._common import missing_extra_message
        from flowrl_deploy.errors import FlowRLError
        from flowrl_deploy.export import export_for_serving
        from flowrl_deploy.serve import ServeConfig, serve_forever
        from flowrl_deploy.serve.process import PARENT_PID, stop_without_parent
        from flowrl_deploy.serve.run import ServerFailed, log_stop_during_start_up
        from flowrl_deploy.tls import warn_if_every_user_may_read

        configure_logging(log_format.value, log_level.value)
        stop_without_parent(os.environ.pop(PARENT_PID, None))  # a ServerProcess's child: its parent may be killed
        try:
            loaded.append(True)
            if received:  # one came while the libraries loaded: stop before reading any file
                raise _StopBeforeServing
            env_token = os.environ.get(TOKEN_ENV)
            if env_token is not None and not env_token.strip() and (token is None or token == env_token):
                # click takes an empty variable for an unset one: FLOWRL_TOKEN= would serve with no auth at all
                raise FlowRLError(
                    f"{TOKEN_ENV} is set but empty; give the secret, or unset {TOKEN_ENV} to serve without one"
                )
            if token is not None and not token.strip():  # e.g. --token "$SECRET" with SECRET unset: no auth at all
                raise FlowRLError(
                    "--token is empty (an unset variable?); give the secret, or leave --token out to serve without one"
                )
            token = given_token(token, token_file)
            if token_file:
                warn_if_every_user_may_read(token_file, "--token-file")
            config = ServeConfig(  # checks every setting (ports, counts, limits) as the library does
                model=str(model),
                host=host,
                port=port,
                providers=parse_providers(providers),
                threads=threads,
                cuda_graphs=cuda_graphs,
                max_batch=max_batch,
                batch_window_us=batch_window_us,
                batch_workers=batch_workers,
                workers=workers,
                max_message_bytes=max_message_bytes,
                max_sessions=max_sessions,
                max_connections=max_connections,
                session_idle_s=session_idle_s,
                token=token or "",
                tls_cert=tls_cert,
                tls_key=tls_key,
                client_ca=client_ca,
                metrics_port=metrics_port,
                metrics_host=metrics_host,
                steps=steps,
                watch=watch,
                reload=reload,
                cpus=parse_cpus(cpus),
                rt_priority=rt_priority,
                grace_s=grace_s,
            )
            try:
                abandoned = serve_forever(config, on_ready=print_banner, export_checkpoint=export_for_serving)
            finally:
                loaded.clear()  # serve_forever handled the signals while it ran; any later one is only noted
        except _StopBeforeServing:
            loaded.clear()
            log_stop_during_start_up(received[0])
            return
        except ServerFailed:  # logged: exit 1 at once, whatever handler threads are left (as below)
            logging.shutdown()
            sys.stdout.flush()
            os._exit(1)
        except (FlowRLError, ModuleNotFoundError) as exc:
            # with json the refusal is a JSON line too, not @user_errors' plain `error: …` among them
            message = str(exc) if isinstance(exc, FlowRLError) else missing_extra_message(exc, "serve")
            if log_format.value != "json" or message is None:
                raise
            logging.getLogger("flowrl.serve").error("%s", message)
            raise typer.Exit(1) from None
        if abandoned:
            # calls abandoned at the end of the grace period: their handler threads would hold the exit
            # until their inference returns (the thread pool joins its threads), long after "stopped"
            logging.shutdown()
            sys.stdout.flush()
            os._exit(0)
    finally:
        restore()
