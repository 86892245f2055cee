"""`flowrl stats`: a running server's figures (GetStats): model, sessions, calls, latency, batches, limits."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flowrl_deploy.cli._common import Connection, connects, finite, user_errors
from flowrl_deploy.errors import counted

if TYPE_CHECKING:
    from collections.abc import Iterable

    from google._upb._message import FieldDescriptor as UpbFieldDescriptor
    from google.protobuf.descriptor import FieldDescriptor
    from google.protobuf.message import Message

    from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb

    Field = FieldDescriptor | UpbFieldDescriptor  # a field of Message.DESCRIPTOR, as protobuf's stubs type it


def as_dict(message: Message) -> dict:
    """A reply's fields under their proto names (snake_case, as `flowrl control --json` writes),
    every number a JSON number: protobuf's own JSON mapping (MessageToDict) writes 64-bit counters
    as strings and renames the fields in camelCase. An ``optional`` number the sender left out is null;
    a map's entries come in key order (protobuf iterates a map in an order seeded per process)."""

    def plain(field: Field, value: Any) -> Any:
        return as_dict(value) if field.message_type is not None else value

    def is_map(field: Field) -> bool:  # a map<string, number> (e.g. MethodStats.codes): a JSON object
        return field.message_type is not None and field.message_type.GetOptions().map_entry

    def absent(field: Field) -> bool:  # an `optional` number an older server does not send: null, not 0
        return field.message_type is None and field.has_presence and not message.HasField(field.name)

    return {
        field.name: dict(sorted(getattr(message, field.name).items()))
        if is_map(field)
        else [plain(field, v) for v in getattr(message, field.name)]
        if field.is_repeated
        else None
        if absent(field)
        else plain(field, getattr(message, field.name))
        for field in message.DESCRIPTOR.fields
    }


def reload_failures(reply: pb.GetStatsReply) -> int | None:
    """GetStats' reload failures; None from a server older than the field, which sends none. A server
    from before the field was ``optional`` left out a 0 too, but it sends ``limits``, which came after."""
    if reply.HasField("reload_failures") or reply.limits:
        return reply.reload_failures
    return None


_NO_RELEASE = "server release not reported (older than this client)"
DEADLINE = "DEADLINE_EXCEEDED"


def _deadline(method: pb.MethodStats) -> str:
    """A method's DEADLINE_EXCEEDED count; '-' from a server older than ``codes``, which sends none."""
    return str(method.codes.get(DEADLINE, 0)) if method.codes or not method.requests else "-"


def _errors_by_code(methods: Iterable[pb.MethodStats]) -> list[str]:
    """``Act: INVALID_ARGUMENT 5, NOT_FOUND 3``: each method's calls that were not OK, by status code."""
    lines = []
    for method in methods:
        errors = sorted((code, n) for code, n in method.codes.items() if code != "OK" and n)
        errors.sort(key=lambda item: -item[1])
        if errors:
            lines.append(f"  {method.method}: " + ", ".join(f"{code} {n}" for code, n in errors))
    return lines


@user_errors
@connects
def stats(
    *,
    connection: Connection,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    timeout: Annotated[float, typer.Option(parser=finite, help="Seconds to wait.")] = 5.0,
) -> None:
    """Print a running server's model version, uptime, sessions, per-method calls (in all, not OK, and
    DEADLINE_EXCEEDED: a deadline that passed at the server, then every code that was not OK) and latency,
    batches, reloads, and each limit's use and refusals. p50/p99 are of each method's latest timed calls,
    at most 10,000 (the server says how many), a span of time that shortens as the load grows;
    Prometheus' flowrl_request_latency_seconds holds every call since start."""
    with connection.client(timeout) as client:
        reply = client.stats()
    failures = reload_failures(reply)
    if as_json:
        from flowrl_deploy.codec import UNCOUNTED_REFUSALS  # here: the CLI starts without protobuf

        figures = {**as_dict(reply), "reload_failures": failures}
        for method in figures["methods"]:  # calls but no codes: a server older than `codes`, which sends none
            if method["requests"] and not method["codes"]:
                method["codes"] = None
        for limit in figures["limits"]:  # the server's 0 for refusals it cannot see (the table's '-')
            if limit["limit"] in UNCOUNTED_REFUSALS:
                limit["refused"] = None
        typer.echo(json.dumps(figures, indent=2))
        return
    typer.echo(
        f"model {reply.model_version or '(none yet: loading)'}, up {reply.uptime_s:.0f} s, "
        f"{counted(reply.sessions, 'session')}, "
        f"{counted(reply.batches, 'batch', 'batches')} (mean size {reply.mean_batch_size:.2f}), "
        f"{counted(reply.reloads, 'reload')}, "
        + (
            f"{counted(failures, 'reload')} failed, "
            if failures is not None
            else "reloads failed unknown (older server), "
        )
        + (f"server flowrl-deploy {reply.server_version}" if reply.server_version else _NO_RELEASE)
    )
    window = reply.percentile_window  # 0 from an older server, which does not say
    typer.echo(f"calls (p50/p99 of each method's latest {window} timed calls):" if window else "calls:")
    typer.echo(f"{'method':<10} {'requests':>9} {'errors':>7} {'deadline':>8} {'p50 µs':>8} {'p99 µs':>8}")
    for m in reply.methods:
        p50, p99 = (f"{m.p50_us:>8.0f}", f"{m.p99_us:>8.0f}") if m.timed_calls else (f"{'-':>8}", f"{'-':>8}")
        typer.echo(f"{m.method:<10} {m.requests:>9} {m.errors:>7} {_deadline(m):>8} {p50} {p99}")
    if errors := _errors_by_code(reply.methods):
        typer.echo("errors by code:")
        typer.echo("\n".join(errors))
    if reply.limits:  # an older server sends none
        from flowrl_deploy.codec import UNCOUNTED_REFUSALS  # here: the CLI starts without protobuf

        typer.echo(f"{'limit':<11} {'in use':>9} {'most':>7} {'refused':>8}")
        for limit in reply.limits:
            refused = "-" if limit.limit in UNCOUNTED_REFUSALS else str(limit.refused)
            typer.echo(f"{limit.limit:<11} {limit.in_use:>9} {limit.most:>7} {refused:>8}")
