"""`flowrl stats` and `flowrl reload` against a real in-process server with a token."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from tiny_policy import OBS_DIM, write_policy
from typer.testing import CliRunner

from flowrl_deploy.cli import app
from flowrl_deploy.cli.stats import _errors_by_code, as_dict
from flowrl_deploy.client import PolicyClient, ServiceError
from flowrl_deploy.serve import PolicyServer, ServeConfig

runner = CliRunner()
TOKEN = "s3cret"


@pytest.fixture()
def served(tmp_path):
    path = write_policy(tmp_path / "policy.onnx")
    with PolicyServer(ServeConfig(str(path), port=0, token=TOKEN, grace_s=0)).start() as server:
        yield server, tmp_path


def call(server, *args, token=TOKEN):
    return runner.invoke(app, [*args, "--server", server.address, "--token", token])


def as_an_older_server(monkeypatch, *fields: str) -> list:
    """Make PolicyClient.stats read as from a server older than ``fields`` (they are left out); the
    list returned collects the replies as the server sent them."""
    stats, sent = PolicyClient.stats, []

    def older(self):
        reply = stats(self)
        sent.append(type(reply).FromString(reply.SerializeToString()))
        for field in fields:
            reply.ClearField(field)
        return reply

    monkeypatch.setattr(PolicyClient, "stats", older)
    return sent


def test_stats_counts_the_calls_made(served):
    server, _ = served
    assert call(server, "query", "--obs", "[0.1, 0.2, 0.3]").exit_code == 0
    result = call(server, "stats")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("model v1-") and "0 reloads" in result.output
    act = next(line.split() for line in result.output.splitlines() if line.startswith("Act "))
    assert act[1:4] == ["1", "0", "0"] and float(act[4]) > 0  # one request, no error, no deadline miss, timed
    figures = json.loads(call(server, "stats", "--json").output)
    assert figures["model_version"].startswith("v1-") and figures["uptime_s"] > 0
    act = next(m for m in figures["methods"] if m["method"] == "Act")
    # numbers as numbers (protobuf's JSON mapping wrote 64-bit counters as strings), snake_case as control --json
    assert (act["requests"], act["errors"], act["timed_calls"]) == (1, 0, 1) and act["p50_us"] > 0
    assert (figures["sessions"], figures["batches"], figures["reloads"]) == (0, 1, 0)


def test_stats_shows_each_limit_in_use_and_its_refusals(tmp_path):
    """The refusals at a limit were counted in Prometheus' flowrl_refused_total only: an operator
    without Prometheus could not see that robots were being refused. GetStats and `flowrl stats`
    give each limit: what is in use of it, its most, and the calls it refused."""
    path = write_policy(tmp_path / "policy.onnx")
    config = ServeConfig(str(path), port=0, token=TOKEN, workers=3, max_sessions=1, grace_s=0)
    server = PolicyServer(config).start()
    client = PolicyClient(server.address, token=TOKEN)
    with server, client, client.session(period_s=0.5, seed=0) as robot:
        robot.act(np.zeros(OBS_DIM, np.float32))  # its stream holds the one session (a Reset's would give way)
        for _ in range(2):
            with pytest.raises(ServiceError):  # the session limit: refused, twice
                client.reset("robot-2")
        text, as_json = call(server, "stats"), call(server, "stats", "--json")
    assert text.exit_code == 0 and as_json.exit_code == 0, text.output + as_json.output
    lines = text.output.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("limit ")))
    assert lines[header].split() == ["limit", "in", "use", "most", "refused"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[header + 1 :]}
    if "connections" in rows:  # Linux: this command's connection, maybe the closed client's not yet closed here
        connections = rows.pop("connections")
        assert int(connections[0]) >= 1 and connections[1:] == ["512", "-"], connections  # refusals: uncounted
    assert rows == {
        "control": ["1", "4", "0"],  # the GetStats answering
        "health": ["0", "2", "0"],
        "reflection": ["0", "2", "0"],
        "sessions": ["1", "1", "2"],
        "watch": ["0", "4", "0"],
        "workers": ["1", "3", "0"],  # the robot's stream
    }
    limits = {row.pop("limit"): row for row in json.loads(as_json.output)["limits"]}
    assert limits["sessions"] == {"in_use": 1, "most": 1, "refused": 2}
    assert limits["workers"] == {"in_use": 1, "most": 3, "refused": 0}


def test_stats_json_gives_null_for_refusals_the_server_does_not_count(served, monkeypatch):
    """The `connections` limit's refusals are gRPC's, unseen by the server, whose GetStats sends 0: the
    table printed '-' but `--json` said `"refused": 0` (upgrade review F9), where docs/compatibility.md
    promises null for what is unknown. Made up here where the server has no such row (not Linux)."""
    from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb

    stats = PolicyClient.stats

    def with_connections(self):
        reply = stats(self)
        if not any(limit.limit == "connections" for limit in reply.limits):
            reply.limits.add(limit="connections", in_use=1, most=512)
        return reply

    monkeypatch.setattr(PolicyClient, "stats", with_connections)
    server, _ = served
    result = call(server, "stats", "--json")
    assert result.exit_code == 0, result.output
    limits = json.loads(result.output)["limits"]
    by_name = {row["limit"]: row for row in limits}
    assert by_name["connections"]["refused"] is None and by_name["connections"]["most"] == 512
    assert all(row["refused"] == 0 for name, row in by_name.items() if name != "connections")
    assert as_dict(pb.LimitStats(limit="workers"))["refused"] == 0  # a counted limit's 0 stays a 0


def test_stats_of_a_server_that_sends_no_limits_prints_no_limit_table(served, monkeypatch):
    """A server older than GetStats' `limits` sends none: no empty table under a header."""
    server, _ = served
    as_an_older_server(monkeypatch, "limits")
    result = call(server, "stats")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].startswith("method ")  # the (empty) methods table ends the output


def test_calls_refused_for_their_token_are_counted_but_not_timed(served):
    server, _ = served
    assert call(server, "stats", token="wrong").exit_code == 1
    result = call(server, "stats")
    assert result.exit_code == 0, result.output
    row = next(line.split() for line in result.output.splitlines() if line.startswith("GetStats "))
    assert row == ["GetStats", "1", "1", "0", "-", "-"]  # no latency made up for a call that never ran


def test_stats_tells_deadline_misses_from_other_errors_and_names_the_percentile_window(served):
    """`errors` lumped every code together, and the percentiles' window was not said anywhere."""
    server, _ = served
    for code, n in (("OK", 5), ("DEADLINE_EXCEEDED", 3), ("INVALID_ARGUMENT", 2)):
        for _ in range(n):
            server.servicer.metrics.record("StreamAct", code, 1e-4)
    text, as_json = call(server, "stats"), call(server, "stats", "--json")
    assert text.exit_code == 0 and as_json.exit_code == 0, text.output + as_json.output
    lines = text.output.splitlines()
    assert next(line for line in lines if line.startswith("method ")).split()[:4] == [
        "method",
        "requests",
        "errors",
        "deadline",
    ]
    assert next(line.split() for line in lines if line.startswith("StreamAct "))[:4] == ["StreamAct", "10", "5", "3"]
    assert "latest 10000 timed calls" in text.output
    assert "StreamAct: DEADLINE_EXCEEDED 3, INVALID_ARGUMENT 2" in text.output
    figures = json.loads(as_json.output)
    stream = next(m for m in figures["methods"] if m["method"] == "StreamAct")
    assert stream["codes"] == {"OK": 5, "DEADLINE_EXCEEDED": 3, "INVALID_ARGUMENT": 2}
    assert figures["percentile_window"] == 10_000


def test_stats_json_lists_the_codes_in_name_order_whatever_order_protobuf_iterates_them():
    """protobuf (upb) iterates a map in an order of its hash, seeded per process: `flowrl stats --json`
    printed each method's codes in another order at each run, so two runs' output differed line by line
    for the same figures. Eight codes: protobuf gives them in name order only once in 8! = 40,320."""
    from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb

    names = ["ABORTED", "CANCELLED", "DEADLINE_EXCEEDED", "INTERNAL", "INVALID_ARGUMENT", "NOT_FOUND", "OK", "UNKNOWN"]
    method = pb.MethodStats(method="Act", codes={name: n for n, name in enumerate(names, 1)})
    assert list(as_dict(method)["codes"]) == sorted(method.codes)


def test_errors_by_code_come_most_first():
    act = SimpleNamespace(method="Act", codes={"ABORTED": 1, "NOT_FOUND": 5, "OK": 3})
    assert _errors_by_code([act]) == ["  Act: NOT_FOUND 5, ABORTED 1"]


def _as_from_an_older_server(monkeypatch) -> None:
    """PolicyClient.stats replies as from a server older than MethodStats' `codes` and `percentile_window`."""
    stats = PolicyClient.stats

    def older(self):
        reply = stats(self)
        for method in reply.methods:
            method.ClearField("codes")
        reply.ClearField("percentile_window")
        return reply

    monkeypatch.setattr(PolicyClient, "stats", older)


def test_stats_of_a_server_that_sends_no_codes_shows_no_deadline_count(served, monkeypatch):
    """A server older than MethodStats' `codes` sends none: its deadline misses are unknown, not 0."""
    server, _ = served
    server.servicer.metrics.record("Act", "DEADLINE_EXCEEDED", 1e-4)
    _as_from_an_older_server(monkeypatch)
    result = call(server, "stats")
    assert result.exit_code == 0, result.output
    assert next(line.split() for line in result.output.splitlines() if line.startswith("Act "))[:4] == [
        "Act",
        "1",
        "1",
        "-",
    ]
    assert "latest 10000" not in result.output and "at most" not in result.output


def test_stats_json_of_a_server_that_sends_no_codes_nor_window_has_nulls(served, monkeypatch):
    """`--json` wrote `"percentile_window": 0` and `"codes": {}` for a v0.1.0 server, which sends neither:
    a script read 0 deadline misses (upgrade review F2; docs/compatibility.md promises null)."""
    server, _ = served
    server.servicer.metrics.record("Act", "DEADLINE_EXCEEDED", 1e-4)
    stats = PolicyClient.stats
    _as_from_an_older_server(monkeypatch)
    result = call(server, "stats", "--json")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["percentile_window"] is None
    act = next(method for method in figures["methods"] if method["method"] == "Act")
    assert act["requests"] == 1 and act["codes"] is None
    monkeypatch.setattr(PolicyClient, "stats", stats)  # today's server: its figures, a method without calls {}
    figures = json.loads(call(server, "stats", "--json").output)
    assert figures["percentile_window"] == 10_000
    assert next(m for m in figures["methods"] if m["method"] == "Act")["codes"] == {"DEADLINE_EXCEEDED": 1}


def test_a_wrong_token_is_named_without_a_hint_at_tls(served):
    """The TLS hint fits a failed connection (UNAVAILABLE), not a refusal by a server that was reached."""
    server, _ = served
    result = call(server, "stats", token="wrong")
    assert result.exit_code == 1, result.output
    assert "UNAUTHENTICATED" in result.output and "--tls-ca" not in result.output


def test_reload_swaps_in_a_file_beside_the_served_one(served):
    server, folder = served
    write_policy(folder / "next.onnx", scale=2.0)  # same contract, other weights
    result = call(server, "reload", str(folder / "next.onnx"))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("reloaded: v1-") and " -> v2-" in result.output
    assert "1 reload, 0 reloads failed," in call(server, "stats").output
    again = call(server, "reload", str(folder / "next.onnx"))  # the same bytes: nothing to swap
    assert again.exit_code == 0, again.output
    assert again.output.startswith("unchanged: the server already serves that content as v2-")


def test_reload_mistakes_are_one_line_and_the_old_model_keeps_serving(served, tmp_path_factory):
    server, folder = served
    elsewhere = write_policy(tmp_path_factory.mktemp("elsewhere") / "policy.onnx")
    other = write_policy(folder / "other.onnx", action_names=("up", "down"))
    for args, message in (
        (["reload", str(elsewhere)], "PERMISSION_DENIED"),
        (["reload", str(other)], "action_names"),
        (["reload", str(folder / "missing.onnx")], "model not found"),
    ):
        result = call(server, *args)
        assert result.exit_code == 1 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    stats = call(server, "stats").output
    assert stats.startswith("model v1-") and "0 reloads, 3 reloads failed" in stats  # monitoring sees them
    assert json.loads(call(server, "stats", "--json").output)["reload_failures"] == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stats"], "UNAUTHENTICATED"),
        (["stats", "--timeout", "0"], "--timeout must be a number of seconds in (0, 86400], got 0"),
        (["reload", "--tls-cert", "client.pem"], "--tls-cert and --tls-key go together"),
    ],
)
def test_connection_mistakes_are_one_line(served, args, message):
    server, _ = served
    result = call(server, *args, token="wrong")
    assert result.exit_code == 1 and message in result.output, result.output


def test_the_server_reports_its_release_in_getspec_and_getstats_and_stats_prints_it(served):
    """A mixed fleet during a rolling upgrade: which server runs which release."""
    from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
    from flowrl_deploy.versions import release

    server, _ = served
    with PolicyClient(server.address, token=TOKEN) as client:
        assert client.stub.GetSpec(pb.GetSpecRequest(), metadata=client.metadata).server_version == release()
        assert client.stats().server_version == release()
    first = call(server, "stats").output.splitlines()[0]
    assert first.startswith("model v1-") and first.endswith(f", server flowrl-deploy {release()}")
    assert json.loads(call(server, "stats", "--json").output)["server_version"] == release()


def test_stats_of_a_server_that_sends_no_release_says_so(served, monkeypatch):
    server, _ = served
    as_an_older_server(monkeypatch, "server_version")
    result = call(server, "stats")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].endswith(", server release not reported (older than this client)")


def test_stats_of_a_server_that_sends_no_reload_failures_says_unknown_not_0(served, monkeypatch):
    """GetStatsReply.reload_failures came after the first release: an older server sends none, which
    read as "0 reloads failed", and a monitor alerting on reload_failures > 0 was blind there."""
    server, _ = served
    # limits came after reload_failures: a server without both knows neither
    replies = as_an_older_server(monkeypatch, "reload_failures", "limits")
    text = call(server, "stats")
    assert text.exit_code == 0, text.output
    assert "0 reloads, reloads failed unknown (older server)," in text.output.splitlines()[0]
    assert json.loads(call(server, "stats", "--json").output)["reload_failures"] is None
    assert replies and all(reply.HasField("reload_failures") for reply in replies)  # this server sends it, 0 included


def test_stats_of_a_server_that_left_out_a_zero_before_the_field_was_optional_says_0(served, monkeypatch):
    """A server from between reload_failures and its `optional` sent no 0 (proto3 leaves defaults out),
    but it sends limits, which came after: its 0 is a 0."""
    server, _ = served
    as_an_older_server(monkeypatch, "reload_failures")
    assert "0 reloads, 0 reloads failed," in call(server, "stats").output.splitlines()[0]
    assert json.loads(call(server, "stats", "--json").output)["reload_failures"] == 0


def test_stats_of_a_server_still_loading_its_model_says_so(served, monkeypatch):
    """A server asked before its model has loaded names none: the line read 'model , up 1 s'."""
    server, _ = served
    as_an_older_server(monkeypatch, "model_version")  # what a loading server sends: no model version yet
    result = call(server, "stats")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("model (none yet: loading), up ")
