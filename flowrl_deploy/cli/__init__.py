"""The ``flowrl`` command line: one module per command, each a thin layer over a library call.

Command modules import their heavy stage (torch, dm_control, onnx) inside the command body,
so ``flowrl serve`` and ``flowrl query`` run on a robot computer without torch.
"""

import os

# gRPC's C core prints INFO lines on stderr (``I1126 14:29:01.299581 11489 ssl_transport_security.cc:2563]
# Handshake failed ...``) that repeat the one-line error a command prints; its ERROR lines stay. It
# reads GRPC_VERBOSITY when grpc is imported, so this comes before any import; the user's own wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import typer

app = typer.Typer(
    name="flowrl",
    help=(
        "FlowRL from training to a robot's control loop.\n\n"
        "train → checkpoint → export → policy.onnx → serve → a controller asks for actions.\n"
        "Start with `flowrl demo`, which runs every stage on a small task in a few minutes."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# --- command registrations (one line per command module) ---
from flowrl_deploy.cli.export import export  # noqa: E402

app.command()(export)
from flowrl_deploy.cli.inspect import inspect  # noqa: E402

app.command()(inspect)
from flowrl_deploy.cli.serve import serve  # noqa: E402

app.command()(serve)
from flowrl_deploy.cli.query import query  # noqa: E402

app.command()(query)
from flowrl_deploy.cli.control import control  # noqa: E402

app.command()(control)
from flowrl_deploy.cli.train import train  # noqa: E402

app.command()(train)
from flowrl_deploy.cli.eval import eval_command  # noqa: E402

app.command(name="eval")(eval_command)
from flowrl_deploy.cli.demo import demo  # noqa: E402

app.command()(demo)
from flowrl_deploy.cli.stats import stats  # noqa: E402

app.command()(stats)
from flowrl_deploy.cli.reload import reload  # noqa: E402

app.command()(reload)
