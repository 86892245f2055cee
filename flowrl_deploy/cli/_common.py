"""Helpers shared by the command modules."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import inspect
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer

from flowrl_deploy._main import BEFORE_THE_COMMAND, interrupt_behind
from flowrl_deploy.atomic import write_text_atomic
from flowrl_deploy.checkpoint import RUN_JSON_FILES, check_not_a_stream, check_output_path
from flowrl_deploy.connection import DEFAULT_SERVER
from flowrl_deploy.errors import FlowRLError, printable
from flowrl_deploy.extras import missing_extra_message
from flowrl_deploy.signals import stop_name, stop_signal_of
from flowrl_deploy.spec import SOLVERS
from flowrl_deploy.systemd import journal_prefix

if TYPE_CHECKING:
    import grpc

    from flowrl_deploy.client import PolicyClient

MAX_REPORT_BYTES = 64 << 20
"""An existing --json file up to this size is parsed to tell whether it is a report (it may be replaced);
a larger one never is (our reports hold kilobytes), and is kept."""

# The connection options of the commands that call a running server (query, control, stats, reload, wait):
# :func:`connects` gives them to a command.
Server = Annotated[
    str, typer.Option(help="host:port of `flowrl serve` (or dns:///name:port, ipv4:addr:port,addr:port).")
]
TOKEN_ENV = "FLOWRL_TOKEN"
"""The environment variable that gives `--token` (the server's shared secret) to every command."""
Token = Annotated[str, typer.Option(help="The server's shared secret.", envvar=TOKEN_ENV)]
TokenFile = Annotated[
    str,
    typer.Option(
        metavar="<path>",
        help="Read the shared secret from this file instead (one line ending dropped), e.g. "
        "$CREDENTIALS_DIRECTORY/flowrl-token from systemd's LoadCredential=.",
    ),
]
MAX_TOKEN_FILE_BYTES = 64 << 10
"""A --token-file holding more is refused unread: a token is a line, not a file's worth."""
TlsCa = Annotated[str, typer.Option(metavar="<path>", help="PEM CA of the server's TLS certificate.")]
TlsCert = Annotated[
    str, typer.Option(metavar="<path>", help="PEM client certificate, for a server with --client-ca (mTLS).")
]
TlsKey = Annotated[str, typer.Option(metavar="<path>", help="PEM private key of --tls-cert.")]


Solver = Enum("Solver", {name: name for name in SOLVERS}, type=str)  # --solver's choices, from the spec's own tuple


def given(ctx: typer.Context, name: str, *, from_environment: bool = True) -> bool:
    """Whether the user passed option ``name``, not its default: on the command line, or (unless
    ``from_environment`` is false) through its environment variable."""
    source = ctx.get_parameter_source(name)
    sources = ("COMMANDLINE", "ENVIRONMENT") if from_environment else ("COMMANDLINE",)
    return source is not None and source.name in sources


def finite(text: str) -> float:
    """Parser of every float option: a number, never NaN or infinity (Python's float() takes both)."""
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {text!r}")
    return value


def check_writable(flag: str, path: Path) -> None:
    """Fail now, rather than after the work, when a report file cannot be written at ``path``: the
    nearest existing folder on its way must take new entries (the rest is made when writing, by
    :func:`write_report`). Nothing is created, so a command refused later leaves no folder behind."""
    if path.is_dir():
        raise FlowRLError(f"{flag} {path} is a directory; give a file path such as {path / 'report.json'}")
    check_output_path(flag, path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise FlowRLError(f"cannot write {flag} {path}: part of its folder {path.parent} is a file")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FlowRLError(f"cannot write {flag} {path}: {folder} does not take new files")


REPORT_RULE = "a report may replace an earlier report, never another file"
NOT_A_REPORT = f"exists and is not a JSON document: {REPORT_RULE}"
NOT_OUR_REPORT = f"exists and is not a flowrl report (an export's, a control run's or an eval's --json): {REPORT_RULE}"
EXPORT_REPORT_KEYS = frozenset({"path", "contract_hash"})
"""Keys of each entry of `flowrl export --json`'s list (one per file written), in every release."""
CONTROL_REPORT_KEYS = frozenset({"server", "env_id", "hz", "deadline_ms", "steps", "deadline_misses"})
"""Keys of `flowrl control --json`'s object (the run's figures), in every release."""
EVAL_REPORT_KEYS = frozenset({"policy", "env_id", "sampler", "seed", "returns"})
"""Keys of `flowrl eval --json`'s object (its episodes' figures)."""


def is_flowrl_report(value: object) -> bool:
    """Whether the JSON ``value`` has the shape of a report flowrl writes (told by its shape, so that
    the reports of earlier releases count too): `flowrl export --json`'s non-empty list of objects each
    holding :data:`EXPORT_REPORT_KEYS`, or `flowrl control --json`'s object holding :data:`CONTROL_REPORT_KEYS`, or
    `flowrl eval --json`'s holding :data:`EVAL_REPORT_KEYS`."""
    if isinstance(value, dict):
        return value.keys() >= CONTROL_REPORT_KEYS or value.keys() >= EVAL_REPORT_KEYS
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(entry, dict) and entry.keys() >= EXPORT_REPORT_KEYS for entry in value)
    )


TOO_LARGE_FOR_A_REPORT = (
    f"exists and holds more than {MAX_REPORT_BYTES >> 20} MiB, far more than a report: {REPORT_RULE}"
    " (delete it first to replace it)"
)


def _replace_refusal(path: Path) -> str:
    """Why a report must not replace ``path`` ('' when it may): an existing file (not a link) that is
    a run's or checkpoint's JSON file by name, holds something other than one JSON document (a
    model, a certificate, a CSV, a run's metrics.jsonl), or a JSON document that is not a report
    flowrl wrote (:func:`is_flowrl_report`: a user's settings.json, an observation). An empty file
    holds nothing to lose. A file beyond :data:`MAX_REPORT_BYTES` is not one of our reports, whatever
    it holds (a long JSON-lines log begins with ``{`` and ends with ``}``, as a report does)."""
    if path.is_symlink() or not path.is_file():
        return ""  # a link is replaced, never written through; a missing file loses nothing
    if path.name in RUN_JSON_FILES:
        return f"is the name of a training run's or checkpoint's own file ({path.name}): {REPORT_RULE}"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_REPORT_BYTES + 1)
    except OSError:
        return ""  # unreadable here: the write says why, if it fails too
    if len(data) > MAX_REPORT_BYTES:
        return TOO_LARGE_FOR_A_REPORT
    if not data.strip():
        return ""
    try:
        value = json.loads(data)
    except RecursionError:
        return NOT_OUR_REPORT  # JSON nested deeper than any report
    except ValueError:  # not JSON, or not UTF-8
        return NOT_A_REPORT
    return "" if is_flowrl_report(value) else NOT_OUR_REPORT


def check_report(flag: str, path: Path, inputs: dict[str, str | Path] | None = None) -> None:
    """:func:`check_writable` for a JSON report, and refuse a ``path`` whose writing would destroy
    data: a file among the command's ``inputs`` ({flag: path}, e.g. the --local-model it runs) or
    an existing file that is not a report flowrl wrote (:func:`_replace_refusal`). A report may
    replace an earlier report, never a model or any other file."""
    check_writable(flag, path)
    target = path.parent.resolve() / path.name  # a link at ``path`` is replaced, not its target
    for name, given in (inputs or {}).items():
        if given and Path(given).resolve() == target:
            raise FlowRLError(f"{flag} {path} is also the {name} file; give the report another name")
    if why := _replace_refusal(path):
        raise FlowRLError(f"{flag} {path} {why}; give the report another name")


REPORT_TO_STDOUT = "-"
"""The ``--json`` value that prints the report on standard output (``| jq``); ``./-`` names a file."""


def report_text(report: object) -> str:
    """A command's JSON report as :func:`write_report` writes it (less its last line end)."""
    return json.dumps(report, indent=2)


def write_report(flag: str, path: Path, report: object) -> None:
    """Write a command's JSON report to ``path`` (checked earlier by :func:`check_report`), as a new
    file renamed onto it: a symlink at ``path`` is replaced, never written through (it may point at
    a checkpoint's weights), a file that is not a report (:func:`_replace_refusal`) is never
    replaced, and a failed write leaves ``path`` as it was."""
    check_not_a_stream(flag, path)  # the links on its way may have changed since the check
    if why := _replace_refusal(path):  # e.g. made after the check, or a command that checked with check_writable
        raise FlowRLError(f"{flag} {path} {why}; the report was not written")
    try:
        write_text_atomic(path, report_text(report) + "\n")
    except FlowRLError as exc:
        raise FlowRLError(f"{flag}: {exc}") from None


def read_token_file(path: str) -> str:
    """The token in --token-file ``path``: its text less one line ending (``\\n`` or ``\\r\\n``, as
    ``echo`` and editors leave), checked as a token is (:func:`~flowrl_deploy.connection.checked_token`).
    An unreadable, empty or oversized file is refused in one line; no message shows the token."""
    from flowrl_deploy.connection import checked_token

    name = f"--token-file {printable(path)}"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise FlowRLError(f"cannot read {name}: {exc.strerror or exc}") from None
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise FlowRLError(
            f"{name} holds more than {MAX_TOKEN_FILE_BYTES >> 10} KiB: give a file holding the token alone"
        )
    text = data.decode("utf-8", "replace")
    text = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
    if not text.strip():
        raise FlowRLError(f"{name} is empty: write the server's shared secret in it")
    if "\n" in text or "\r" in text:
        raise FlowRLError(f"{name} holds more than one line: write the token alone, on one line")
    return checked_token(text, name)


def given_token(token: str | None, token_file: str) -> str | None:
    """The token a command was given: ``token`` (--token or :data:`TOKEN_ENV`), or the one in
    ``token_file`` (:func:`read_token_file`); both at once are refused, naming where each came from."""
    if not token_file:
        return token
    if token:
        source = f"{TOKEN_ENV} (in the environment)" if os.environ.get(TOKEN_ENV) == token else "--token"
        raise FlowRLError(f"{source} and --token-file both give the token: give it once")
    return read_token_file(token_file)


P = ParamSpec("P")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class Connection:
    """The connection options of a command that calls a running server, as :func:`connects` gives them."""

    server: str
    token: str = dataclasses.field(repr=False)  # a secret: never in a repr or a traceback
    token_file: str
    tls_ca: str
    tls_cert: str
    tls_key: str

    def token_to_send(self) -> str:
        """The token to send ('' for none): --token, :data:`TOKEN_ENV` or --token-file's (:func:`given_token`)."""
        return given_token(self.token, self.token_file) or ""

    def refused_token_hint(self) -> str:
        """What to do about an UNAUTHENTICATED reply, in this command's terms: the server's own words
        name the gRPC header (``authorization: Bearer <token>``), for clients of its API."""
        if self.token_file:
            source = f"--token-file {printable(self.token_file)}"
        elif self.token:
            source = TOKEN_ENV if os.environ.get(TOKEN_ENV) == self.token else "--token"
        else:
            return (
                f"the server asks for a token: pass its shared secret with --token or --token-file, or set {TOKEN_ENV}"
            )
        return f"the server refused the token given with {source}: give the server's shared secret"

    @contextlib.contextmanager
    def client(self, timeout_s: float | None = None) -> Iterator[PolicyClient]:
        """A client for one command; a failed call is one line, and a failed connection says which
        TLS option may be missing. A bad --server, token or TLS file is refused before connecting (by
        :class:`PolicyClient`), naming the flag and the file."""
        import grpc

        from flowrl_deploy.client import PolicyClient, ServiceError
        from flowrl_deploy.connection import checked_timeout, connection_hint, silent_hint

        if timeout_s is not None:  # named by its flag here; PolicyClient would call it timeout_s
            checked_timeout(timeout_s, "--timeout")
        with PolicyClient(
            self.server,
            token=self.token_to_send(),
            tls_ca=self.tls_ca,
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
            timeout_s=timeout_s,
            target_name="--server",
        ) as client:
            try:
                yield client
            except ServiceError as exc:
                if exc.code == grpc.StatusCode.UNAUTHENTICATED:
                    hint = self.refused_token_hint()
                elif exc.code == grpc.StatusCode.UNAVAILABLE:
                    hint = connection_hint(exc.details, self.server, self.tls_ca, self.tls_cert)
                elif exc.code == grpc.StatusCode.DEADLINE_EXCEEDED and client.timeout_s is not None:
                    connected = channel_is_ready(client.channel)
                    hint = silent_hint(connected, client.timeout_s, self.tls_ca, self.tls_cert)
                else:
                    hint = ""
                raise FlowRLError(f"{exc} ({hint})" if hint else str(exc)) from None


def channel_is_ready(channel: grpc.Channel) -> bool:
    """Whether ``channel`` has a connection up (READY) now; asked after a call ran out of time."""
    import grpc

    ready = grpc.channel_ready_future(channel)
    try:
        ready.result(timeout=0.2)  # its first state arrives on gRPC's thread, at once
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        ready.cancel()


_SERVER_OPTION = inspect.Parameter("server", inspect.Parameter.KEYWORD_ONLY, default=DEFAULT_SERVER, annotation=Server)
_CREDENTIAL_OPTIONS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default="", annotation=annotation)
    for name, annotation in [
        ("token", Token),
        ("token_file", TokenFile),
        ("tls_ca", TlsCa),
        ("tls_cert", TlsCert),
        ("tls_key", TlsKey),
    ]
]


def connects(command: Callable[..., R]) -> Callable[..., R]:
    """Give a command that calls a running server the connection options, declared here once: its
    keyword-only ``connection: Connection`` parameter becomes --token, --token-file, --tls-ca,
    --tls-cert and --tls-key in its place, and --server comes first of its options (after its ``*``;
    a keyword-only ``server`` parameter of its own replaces the shared one); the command gets them as
    one :class:`Connection`. Typer reads the options from the returned
    function's ``__signature__``."""
    # typer needs the Annotated objects, not strings; not typing.get_type_hints, which on Python 3.10
    # turns `Annotated[float | None, …] = None` into Optional[Annotated[…]], losing the option's parser
    evaluated = inspect.signature(command, eval_str=True)
    own = evaluated.parameters
    if "connection" not in own or own["connection"].kind != inspect.Parameter.KEYWORD_ONLY:
        raise TypeError(f"@connects: {command.__name__} needs a keyword-only `connection: Connection` parameter")
    server = own.get("server", _SERVER_OPTION)  # a command's own --server replaces the shared one (inspect's)
    params: list[inspect.Parameter] = []
    for param in own.values():
        if param.kind == inspect.Parameter.KEYWORD_ONLY and server not in params:
            params.append(server)
        if param.name != "server":
            params += _CREDENTIAL_OPTIONS if param.name == "connection" else [param]
    signature = inspect.Signature(params, return_annotation=evaluated.return_annotation)  # raises on a name given twice
    fields = [field.name for field in dataclasses.fields(Connection)]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> R:
        given = signature.bind(**kwargs)
        given.apply_defaults()
        options = dict(given.arguments)
        connection = Connection(**{name: options.pop(name) for name in fields})
        if connection.tls_cert and not connection.tls_key:  # most likely the server's certificate, to trust
            from flowrl_deploy.tls import unpaired

            raise FlowRLError(
                f"{unpaired(cert_given=True)} (they are this client's own certificate and key, for a server with "
                "--client-ca; to trust the server's certificate, pass its CA, or a self-signed server's own "
                "certificate, with --tls-ca)"
            )
        try:
            return command(connection=connection, **options)
        except FlowRLError as exc:  # a refusal that Connection.client did not see (control's session)
            from flowrl_deploy.client import ServiceError

            if not (isinstance(exc, ServiceError) and exc.code.name == "UNAUTHENTICATED"):
                raise
            raise FlowRLError(f"{exc} ({connection.refused_token_hint()})") from None

    wrapper.__signature__ = signature  # type: ignore[attr-defined]
    wrapper.__annotations__ = {param.name: param.annotation for param in params} | {
        "return": evaluated.return_annotation
    }
    return wrapper


def shown_message(exc: BaseException) -> str:
    """An error's message as printed: each line's unprintable characters (a terminal escape, a NUL, a
    carriage return in a path the user gave) escaped by :func:`~flowrl_deploy.errors.printable`, so a
    name cannot drive the terminal; a trailing line end (from a library's text) dropped."""
    return "\n".join(printable(line) for line in str(exc).rstrip("\n").split("\n"))


finished: list[str] = []
"""The command (its name) that returned, once one has: a Ctrl-C that lands after, while click closes
its context, reaches no command's handler (:func:`report_late_interrupt` says it)."""


def report_late_interrupt() -> None:
    """Say, on stderr, that a Ctrl-C came after the command had finished (its output is complete), or
    before it began (nothing was done); click exits 130 without a word."""
    if finished:
        typer.secho(f"interrupted (Ctrl-C) after flowrl {finished[-1]} finished: its output is complete", err=True)
    else:
        typer.secho(BEFORE_THE_COMMAND, err=True)


class OutputFailed(Exception):
    """Standard output could not take a command's output (a full disk, a reader gone): the ``OSError``
    as ``error``, and what the command had done by then (``done``, e.g. 'wrote policy.onnx'; '' for
    nothing worth saying). Not an ``OSError`` itself, which click takes for its own closed-pipe case:
    the ``flowrl`` program's handler (:func:`report_output_failure`) says it in one line."""

    def __init__(self, error: OSError, done: str = "", what: str = "the summary") -> None:
        super().__init__(error.strerror or str(error))
        self.error, self.done, self.what = error, done, what


def _is_stdout(stream: object) -> bool:
    if stream is not None and stream in (sys.stdout, sys.__stdout__):
        return True
    try:
        return stream.fileno() == (sys.__stdout__.fileno() if sys.__stdout__ else 1)  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):  # no descriptor: a test's StringIO, a closed stream
        return False


def writing_stdout(exc: BaseException) -> bool:
    """Whether ``exc`` is an ``OSError`` raised writing standard output. Every line a command, --help
    or --version prints goes through click's ``echo``, which writes and flushes in one frame: the
    error is one when that frame is the innermost of its traceback and was writing stdout, not a
    file or stderr (an ``OSError`` from anywhere else keeps its own handling)."""
    if not isinstance(exc, OSError) or exc.__traceback__ is None:
        return False
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    frame = tb.tb_frame
    if frame.f_code.co_name != "echo" or not str(frame.f_globals.get("__name__")).endswith("click.utils"):
        return False
    return _is_stdout(frame.f_locals.get("file"))


def stdout_to_null_device() -> None:
    """Point standard output's file descriptor at the null device, as Python's documentation advises
    after a ``BrokenPipeError``: what is left in its buffer then goes there at exit, instead of failing
    again as 'Exception ignored … BrokenPipeError' (or 'No space left on device')."""
    try:
        fd = sys.stdout.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (AttributeError, OSError, ValueError):  # no descriptor of its own: nothing is flushed at exit
        return
    try:
        os.dup2(null, fd)
    except OSError:
        pass
    finally:
        os.close(null)


def report_output_failure(error: OSError, done: str = "", what: str = "the summary") -> NoReturn:
    """Exit 1 for a standard output that failed: quietly for a reader gone (``EPIPE``: ``| head -1``,
    as Unix tools do), else with one line on stderr naming why and, when ``done`` says it, what the
    command did before (its file is written: a script must not take the export for failed) and
    ``what`` it could not print."""
    stdout_to_null_device()
    if error.errno != errno.EPIPE:
        why = error.strerror or str(error)
        message = (
            f"{done}, but cannot write {what} to standard output: {why}"
            if done
            else f"cannot write to standard output: {why}"
        )
        typer.secho(  # after the command's click context: NO_COLOR is told here again
            f"{journal_prefix(3)}error: {printable(message)}",
            err=True,
            fg=typer.colors.RED,
            color=False if colour_off() else None,
        )
    raise SystemExit(1)


def colour_off() -> bool:
    """Whether the user asked for no colour: ``NO_COLOR`` set and not empty (no-color.org), or ``TERM=dumb``."""
    return bool(os.environ.get("NO_COLOR")) or os.environ.get("TERM") == "dumb"


class ResultLines:
    """A command's result lines on standard output, printed after its work. When standard output fails
    (a full disk, a reader gone) the lines left are dropped but the command goes on (its --json report
    is still written); :meth:`check` then raises :class:`OutputFailed` saying what was done. With
    ``on_stderr`` (``--json -``: standard output holds the report alone) they go to standard error;
    ``what`` names them in the message of a failed standard output."""

    def __init__(self, on_stderr: bool = False, what: str = "the summary") -> None:
        self.error: OSError | None = None
        self.on_stderr, self.what = on_stderr, what

    def echo(self, text: str) -> None:
        if self.error is not None:
            return
        if self.on_stderr:
            with contextlib.suppress(OSError):  # as warnings: the command's result is the report on stdout
                typer.echo(text, err=True)
            return
        try:
            typer.echo(text)
        except OSError as exc:
            if not writing_stdout(exc):
                raise
            self.error = exc

    def check(self, done: str) -> None:
        """Raise :class:`OutputFailed` saying ``done`` if a line could not be printed."""
        if self.error is not None:
            raise OutputFailed(self.error, done, self.what)


class JsonReport:
    """Where a command's ``--json`` report goes: a file (``path``), standard output (``--json -``: the report
    alone there, the command's summary lines on stderr) or nowhere. ``path_of`` makes the file's path
    from the option's value (export's takes a folder too)."""

    def __init__(self, json_out: str | None, path_of: Callable[[str], Path] = Path) -> None:
        self.to_stdout = json_out == REPORT_TO_STDOUT
        self.path = None if json_out is None or self.to_stdout else path_of(json_out)

    def summary_lines(self) -> ResultLines:
        """The lines of the command's summary: on stderr when standard output holds the report."""
        return ResultLines(on_stderr=self.to_stdout)

    def emit(self, report: object, printed: ResultLines | None = None) -> ResultLines:
        """Print ``report`` on standard output or write it to its file (:func:`write_report`), after the
        summary ``printed``; returns the lines whose :meth:`ResultLines.check` says what stdout failed to take."""
        printed = printed or ResultLines()
        if self.to_stdout:
            printed = ResultLines(what="the --json report")
            printed.echo(report_text(report))
        elif self.path is not None:
            write_report("--json", self.path, report)
        return printed

    def wrote(self) -> str:
        """' and wrote the --json report PATH' when it went to a file ('' otherwise), for a command's 'done'
        words."""
        return "" if self.path is None else f" and wrote the --json report {self.path}"


def user_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn a :class:`FlowRLError`, or a missing module of an optional extra (torch on a robot
    computer's base install), into a one-line message on stderr and exit status 1, and Ctrl-C (or an
    :class:`Interrupted` stop signal) into one line saying so and the shell's 128 + signal: 130 for
    Ctrl-C, 143 for SIGTERM (typer's own handling exits 130 silently); so is an error raised from
    a Ctrl-C (:func:`~flowrl_deploy._main.interrupt_behind`: mujoco's import makes it an ImportError).
    Under journald an error line begins with its level, ``<3>``
    (:func:`~flowrl_deploy.systemd.journal_prefix`). Any other missing module is a bug and keeps its
    traceback. A failed write to standard output becomes
    :class:`OutputFailed`, which the ``flowrl`` program reports (:func:`report_output_failure`)."""
    command_name = command.__name__.removesuffix("_command")

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            try:
                result = command(*args, **kwargs)
            except Exception as exc:  # one raised from a Ctrl-C (mujoco's import: ImportError) is the Ctrl-C
                if (interrupt := interrupt_behind(exc)) is None:
                    raise
                raise interrupt from None
            finished.append(command_name)  # a Ctrl-C from here on finds the work done
            return result
        except FlowRLError as exc:
            typer.secho(f"{journal_prefix(3)}error: {shown_message(exc)}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None
        except ModuleNotFoundError as exc:
            message = missing_extra_message(exc, command_name)
            if message is None:
                raise
            typer.secho(f"{journal_prefix(3)}error: {message}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as exc:  # a command that has more to say (what was done) catches it first
            signum = stop_signal_of(exc)
            how = stop_name(signum)
            typer.secho(f"interrupted ({how}): flowrl {command_name} stopped before it finished", err=True)
            raise typer.Exit(128 + signum) from None
        except OSError as exc:
            if not writing_stdout(exc):
                raise
            raise OutputFailed(exc) from None

    return wrapper


@contextlib.contextmanager
def warnings_to(log: logging.Logger, emit: Callable[[logging.LogRecord], None]) -> Iterator[None]:
    """Within the block, ``log``'s warnings go to ``emit`` alone (not on to the root's handlers). A warning
    that cannot be written (stderr closed, a full disk under a scheduler) is dropped: raised from the
    ``log.warning`` call, it would stop the work that warned (a training run, unsaved)."""

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            with contextlib.suppress(OSError):
                emit(record)

    handler, propagate = Handler(logging.WARNING), log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def client_warnings(*, skip: tuple[str, ...] = ()) -> contextlib.AbstractContextManager[None]:
    """Within the block, the client library's warnings (logger ``flowrl.client``) reach the user as
    a command's own do, ``warning: …`` on stderr, instead of as bare lines from Python's last-resort
    handler; ``skip`` drops those whose format string is one of these (said already, naming a flag)."""
    from flowrl_deploy.session import log

    def echo(record: logging.LogRecord) -> None:
        if record.msg not in skip:
            typer.secho(f"warning: {record.getMessage()}", err=True, fg=typer.colors.YELLOW)

    return warnings_to(log, echo)
