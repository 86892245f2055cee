"""The ``flowrl`` command line: one module per command, each a thin layer over a library call.

Command modules import their heavy stage (torch, dm_control, onnx) inside the command body,
so ``flowrl serve`` and ``flowrl query`` run on a robot computer without torch.
"""

import os

# gRPC's C core prints INFO lines on stderr (``I1126 14:29:01.299581 11489 ssl_transport_security.cc:2563]
# Handshake failed ...``) that repeat the one-line error a command prints; its ERROR lines stay. It
# reads GRPC_VERBOSITY when grpc is imported, so this comes before any import; the user's own wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import codecs
import sys

import typer

# Sets onnxruntime's telemetry default (ORT_DISABLE_TELEMETRY) for every command, whichever code imports
# onnxruntime first; onnxruntime itself is not imported here.
import flowrl_deploy.ort  # noqa: F401


def _replace_unencodable_output() -> None:
    """Print what stdout's encoding cannot show as '?' instead of dying with UnicodeEncodeError after the
    work is done: Windows writes cp1252 when stdout is redirected or piped, which has no '→' or 'Δ'.
    A UTF-8 stdout (Linux, macOS, a Windows console) is left alone; stderr already escapes them."""
    stream = sys.stdout
    try:
        utf8 = codecs.lookup(stream.encoding or "ascii").name == "utf-8"
    except (AttributeError, LookupError):
        utf8 = False
    if not utf8 and getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
        stream.reconfigure(errors="replace")


NOT_PATHS = frozenset({"--token"})
"""Options whose value is never a path: a secret given as ``~/s3cret`` stays as given (the server's and the
client's ``FLOWRL_TOKEN``, ``PolicyClient(token=…)`` are not expanded either)."""


def home_expanded(argv: list[str]) -> list[str]:
    """``argv`` with a leading ``~/`` (or a lone ``~``) of an argument, or of an option's ``--name=`` value,
    expanded to the home folder, as a shell expands it unquoted: from a quoted ``'~/x'``, a ``subprocess`` list
    or ``--out=~/x`` (which bash leaves alone) the path made a folder named ``~`` in the working one, which
    ``rm -rf ~`` then takes the home folder for. ``~user`` forms, and the values of :data:`NOT_PATHS`, are left
    as they are; so is all of it on Windows, where click expands ``~`` itself."""
    if os.name == "nt":
        return argv

    def expanded(text: str) -> str:
        return os.path.expanduser(text) if text == "~" or text.startswith("~/") else text

    out: list[str] = []
    for arg in argv:
        name, equals, value = arg.partition("=")
        if (out and out[-1] in NOT_PATHS) or name in NOT_PATHS:
            out.append(arg)
        else:
            out.append(f"{name}={expanded(value)}" if equals and name.startswith("--") else expanded(arg))
    return out


class _Flowrl(typer.Typer):
    def __call__(self, *args, **kwargs):
        from flowrl_deploy.cli._common import (
            OutputFailed,
            colour_off,
            report_late_interrupt,
            report_output_failure,
            writing_stdout,
        )

        _replace_unencodable_output()  # before any output, --help's included
        if colour_off():
            kwargs.setdefault("color", False)
        if not args and "args" not in kwargs and (expanded := home_expanded(sys.argv[1:])) != sys.argv[1:]:
            kwargs["args"] = expanded
        try:
            return super().__call__(*args, **kwargs)
        except SystemExit as exc:
            # click's 130 for a Ctrl-C outside any command's own handler (raised `from` the interrupt)
            if exc.code == 130 and isinstance(getattr(exc.__context__, "__cause__", None), KeyboardInterrupt):
                report_late_interrupt()
            raise
        except KeyboardInterrupt:  # while typer builds the command from the functions, before click's handling
            report_late_interrupt()
            raise SystemExit(130) from None
        except OutputFailed as exc:  # a command's output (@user_errors): one line, or a quiet exit for EPIPE
            report_output_failure(exc.error, exc.done, exc.what)
        except OSError as exc:  # --help's, --version's (click's own EPIPE handling exits 1 quietly first)
            if not writing_stdout(exc):
                raise
            report_output_failure(exc)


app = _Flowrl(
    name="flowrl",
    help=(
        "FlowRL from training to a robot's control loop.\n\n"
        "train → checkpoint → export → policy.onnx → serve → a controller asks for actions.\n"
        "Start with `flowrl demo`, which runs every stage on a small task in a few minutes."
    ),
    no_args_is_help=True,
    add_completion=False,
    # click's plain help: it wraps option names and descriptions to the terminal, where rich's panels cut
    # flag names (`--resume-if-exis…`) and squeezed descriptions to ~17 columns of an 80-column terminal
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

from flowrl_deploy.cli.version import main  # noqa: E402

app.callback()(main)  # --version

# --- command registrations (one per command module), listed by `flowrl --help` in this order: the
# pipeline's (demo first, as the help says), then the commands that call a running server. A short_help
# fits an 80-column terminal's command list, which cuts a longer first paragraph with '...' ---
from flowrl_deploy.cli.demo import demo  # noqa: E402

app.command(short_help="Train, export, serve and control a small task; write a report.")(demo)
from flowrl_deploy.cli.train import train  # noqa: E402

app.command(short_help="Train a FlowRL policy; write checkpoints under OUT/checkpoints.")(train)
from flowrl_deploy.cli.eval import eval_command  # noqa: E402

app.command(name="eval", short_help="Print a policy's mean return over some episodes of its task.")(eval_command)
from flowrl_deploy.cli.export import export  # noqa: E402

app.command(short_help="Export a checkpoint's sampler as a verified policy.onnx.")(export)
from flowrl_deploy.cli.inspect import inspect  # noqa: E402

app.command(short_help="Show a policy.onnx's (or a server's) contract, provenance and ops.")(inspect)
from flowrl_deploy.cli.serve import serve  # noqa: E402

app.command(short_help="Serve a policy's actions over gRPC until SIGTERM or Ctrl-C.")(serve)
from flowrl_deploy.cli.query import query  # noqa: E402

app.command(short_help="Print the served policy's action(s) for an observation, as JSON.")(query)
from flowrl_deploy.cli.control import control  # noqa: E402

app.command(short_help="Drive a simulator with served actions; print return and latency.")(control)
from flowrl_deploy.cli.stats import stats  # noqa: E402

app.command(short_help="Print a server's model, sessions, calls, latency and limits.")(stats)
from flowrl_deploy.cli.reload import reload  # noqa: E402

app.command(short_help="Swap a new model into a running server, its contract checked.")(reload)
from flowrl_deploy.cli.wait import wait  # noqa: E402

app.command(short_help="Wait until a server's health is SERVING (exit 0), else exit 1.")(wait)
