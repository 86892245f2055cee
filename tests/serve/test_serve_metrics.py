"""Metrics: the figures of GetStats and the Prometheus buckets, checked on known samples; the
/metrics endpoint on IPv4 and IPv6 hosts."""

from __future__ import annotations

import datetime
import logging
import os
import queue
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from deploying import wait_for
from tiny_policy import OBS_DIM, write_policy

from flowrl_deploy.codec import encode
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.proto.flowrl.v1 import policy_pb2_grpc as pb_grpc
from flowrl_deploy.serve import PolicyServer, ServeConfig, metrics_http
from flowrl_deploy.serve import metrics as metrics_module
from flowrl_deploy.serve.metrics import Metrics
from flowrl_deploy.serve.metrics_http import start_metrics_http


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(sessions=lambda: 0, version=lambda: "v1-test")


def test_get_stats_reports_the_median_and_99th_percentile_of_recent_latencies(metrics):
    for us in range(1, 101):  # 1 µs … 100 µs, one call each
        metrics.record("Act", "OK", us * 1e-6)
    act = metrics.summary()["methods"]["Act"]
    assert act["requests"] == act["timed_calls"] == 100 and act["errors"] == 0
    assert act["p50_us"] == pytest.approx(50.5)
    assert act["p99_us"] == pytest.approx(99.01)  # numpy's linear interpolation of the 99th percentile


def test_get_stats_counts_each_methods_calls_by_status_code(metrics):
    """`errors` lumped every code together: deadline misses could not be told from bad requests."""
    for code, n in (("OK", 3), ("DEADLINE_EXCEEDED", 2), ("INVALID_ARGUMENT", 1)):
        for _ in range(n):
            metrics.record("StreamAct", code, 1e-4)
    metrics.record_untimed("StreamAct", "UNAUTHENTICATED")
    stream = metrics.summary()["methods"]["StreamAct"]
    assert stream["codes"] == {"OK": 3, "DEADLINE_EXCEEDED": 2, "INVALID_ARGUMENT": 1, "UNAUTHENTICATED": 1}
    assert stream["requests"] == 7 and stream["errors"] == 4 and stream["timed_calls"] == 6
    assert metrics.summary()["percentile_window"] == metrics_module.RECENT == 10_000


def test_get_stats_mean_batch_size_is_rows_per_batch(metrics):
    for rows in (1, 3, 8):
        metrics.record_batch(rows, 1e-4)
    summary = metrics.summary()
    assert summary["batches"] == 3
    assert summary["mean_batch_size"] == pytest.approx(4.0)


def test_a_value_on_a_bucket_bound_counts_in_that_bucket(metrics):
    """Prometheus' ``le`` is "less or equal": a batch of 1 row is in le="1", a 1 ms call in le="0.001"."""
    metrics.record_batch(1, 1e-3)
    metrics.record_batch(4, 2e-3)
    metrics.record("Act", "OK", 1e-3)
    text = metrics.exposition().splitlines()
    for line in (
        'flowrl_batch_size_bucket{le="1"} 1',
        'flowrl_batch_size_bucket{le="2"} 1',
        'flowrl_batch_size_bucket{le="4"} 2',
        'flowrl_inference_seconds_bucket{le="0.00075"} 0',
        'flowrl_inference_seconds_bucket{le="0.001"} 1',
        'flowrl_inference_seconds_bucket{le="0.002"} 2',
        'flowrl_request_latency_seconds_bucket{method="Act",le="0.001"} 1',
    ):
        assert line in text


def test_each_total_is_typed_a_counter(metrics):
    """Prometheus takes a rate() of counters only; a `_total` typed gauge is graphed wrong."""
    types = dict(line.split()[2:4] for line in metrics.exposition().splitlines() if line.startswith("# TYPE "))
    totals = {name: kind for name, kind in types.items() if name.endswith("_total")}
    assert "flowrl_reload_failures_total" in totals and "flowrl_reloads_total" in totals
    assert set(totals.values()) == {"counter"}


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]", "::"])
def test_metrics_are_served_on_the_host_the_server_listens_on(metrics, host):
    """`flowrl serve --host ::1 --metrics-port 0` failed: 'Address family for hostname not supported'."""
    if ":" in host and not _has_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (::1)")
    httpd = start_metrics_http(metrics, host, 0)
    try:
        reach = "127.0.0.1" if "." in host else "[::1]"  # '::' listens on every IPv6 interface
        with urllib.request.urlopen(f"http://{reach}:{httpd.server_address[1]}/metrics", timeout=5) as reply:
            assert 'flowrl_model_info{version="v1-test"} 1' in reply.read().decode()
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(("path", "status"), [("/metrics", 200), ("/", 200), ("/metrics?name[]=x", 200), ("/x", 404)])
def test_metrics_are_served_at_metrics_and_the_root_only(metrics, path, status):
    httpd = start_metrics_http(metrics, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                got, body = reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            got, body = exc.code, ""
        assert got == status
        assert ('flowrl_model_info{version="v1-test"} 1' in body) == (status == 200)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_each_limit_counts_its_refusals_and_warns_at_most_once_a_minute(tmp_path, caplog):
    """Calls refused at the session limit or a cap were logged nowhere, and counted only as
    code="RESOURCE_EXHAUSTED" beside every other such refusal: once per stream at the workers cap,
    once per request at the session limit. Each limit now counts in flowrl_refused_total (a stream
    once, however many of its requests are refused) and warns once a minute naming its flag."""
    path = write_policy(tmp_path / "policy.onnx")
    config = ServeConfig(str(path), port=0, workers=2, max_sessions=1, grace_s=0)
    obs = encode(np.zeros(OBS_DIM, np.float32))
    server = PolicyServer(config)
    with (
        caplog.at_level(logging.WARNING, logger="flowrl.serve"),
        server.start(),
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.PolicyServiceStub(channel)
        held = [queue.SimpleQueue() for _ in range(3)]
        try:
            streams = [stub.StreamAct(iter(held[0].get, None), timeout=30)]
            held[0].put(pb.StreamActRequest(session_id="a", obs=obs))
            assert next(streams[0]).status.code == 0  # the one session
            with pytest.raises(grpc.RpcError) as limited:
                stub.Reset(pb.ResetRequest(session_id="c"), timeout=30)
            assert "session limit of 1" in limited.value.details()
            streams.append(stub.StreamAct(iter(held[1].get, None), timeout=30))
            for _ in range(3):  # a robot over the session limit retries every tick
                held[1].put(pb.StreamActRequest(session_id="b", obs=obs))
                assert next(streams[1]).status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
            with pytest.raises(grpc.RpcError) as busy:  # both workers held by the two streams
                next(stub.StreamAct(iter(held[2].get, None), timeout=30))
            assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            exposition = server.servicer.metrics.exposition()
        finally:
            for requests in held:
                requests.put(None)
    assert 'flowrl_refused_total{limit="sessions"} 2' in exposition  # the stream once, the Reset once
    assert 'flowrl_refused_total{limit="workers"} 1' in exposition
    assert 'flowrl_in_use{limit="workers"} 2' in exposition and 'flowrl_in_use{limit="sessions"} 1' in exposition
    assert 'flowrl_limit{limit="workers"} 2' in exposition and 'flowrl_limit{limit="sessions"} 1' in exposition
    assert 'flowrl_refused_total{limit="watch"} 0' in exposition  # every limit, before its first refusal
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "refused" in r.message]
    assert len(warned) == 2
    assert "session limit of 1 reached" in warned[0] and "--max-sessions" in warned[0]
    assert "all --workers 2 handler threads are busy" in warned[1] and "--workers" in warned[1]
    # both held by this test's one connection: the warning names it, so that a client holding them all is found
    assert re.search(r"\(the most by one connection: 2 of the 2, by ipv[46]:\S+:\d+\)$", warned[1]), warned[1]


def test_a_limit_warns_again_after_a_minute_with_the_refusals_since(metrics, monkeypatch, caplog):
    now = [1000.0]
    monkeypatch.setattr(metrics_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    with caplog.at_level(logging.WARNING, logger="flowrl.serve"):
        for _ in range(3):
            metrics.record_limit("workers", "all --workers 2 handler threads are busy; raise --workers")
            now[0] += 25
        metrics.record_limit("workers", "all --workers 2 handler threads are busy; raise --workers")
    assert [r.getMessage() for r in caplog.records] == [
        "refused 1 call at the workers limit: all --workers 2 handler threads are busy; raise --workers",
        "refused 3 calls at the workers limit in the last 75 s: all --workers 2 handler threads are busy; "
        "raise --workers",
    ]
    assert 'flowrl_refused_total{limit="workers"} 4' in metrics.exposition()


def test_latency_buckets_have_edges_around_a_200_hz_budget(metrics):
    """From 2 ms the next edge was 5 ms: a true p99 of 2.2 ms under a 2.5 ms deadline was estimated
    as 3 ms by histogram_quantile, and an alert on the budget fired falsely (obs M9)."""
    for edge in (1.5e-3, 2.5e-3, 3e-3, 4e-3):
        assert edge in metrics_module.LATENCY_BUCKETS_S
    assert list(metrics_module.LATENCY_BUCKETS_S) == sorted(set(metrics_module.LATENCY_BUCKETS_S))
    metrics.record("StreamAct", "OK", 2.2e-3)
    metrics.record_batch(1, 2.2e-3)
    text = metrics.exposition().splitlines()
    for line in (
        'flowrl_request_latency_seconds_bucket{method="StreamAct",le="0.002"} 0',
        'flowrl_request_latency_seconds_bucket{method="StreamAct",le="0.0025"} 1',
        'flowrl_inference_seconds_bucket{le="0.002"} 0',
        'flowrl_inference_seconds_bucket{le="0.0025"} 1',
    ):
        assert line in text


def test_get_stats_computes_its_percentiles_without_holding_what_record_waits_for(metrics, monkeypatch):
    """summary() held the metrics lock for 1-3 ms while it computed percentiles, and every request's
    record() waited behind it, delaying the reply outside the measured latency (obs M6)."""
    for us in range(1, 101):
        metrics.record("Act", "OK", us * 1e-6)
    percentile, recorded = np.percentile, []

    def percentile_while_a_request_records(*args, **kwargs):
        thread = threading.Thread(target=metrics.record, args=("Act", "OK", 1e-6))
        thread.start()
        thread.join(5)
        recorded.append(not thread.is_alive())
        return percentile(*args, **kwargs)

    monkeypatch.setattr(metrics_module.np, "percentile", percentile_while_a_request_records)
    act = metrics.summary()["methods"]["Act"]
    assert recorded == [True]
    assert act["requests"] == 100 and act["p50_us"] == pytest.approx(50.5)  # as copied, before that record


def test_a_scrape_reads_the_limits_without_holding_what_record_waits_for(metrics):
    """Reading the limits may read /proc and makes a few syscalls per descriptor: under the lock,
    every request's record() would wait behind it."""
    reading, release = threading.Event(), threading.Event()

    def slow_limits():
        reading.set()
        release.wait(10)
        return {}

    metrics.limits = slow_limits
    scrape = threading.Thread(target=metrics.exposition)
    scrape.start()
    try:
        assert reading.wait(10)
        recorded = threading.Thread(target=metrics.record, args=("Act", "OK", 1e-4))
        recorded.start()
        recorded.join(2)
        assert not recorded.is_alive()
    finally:
        release.set()
        scrape.join(10)


PROCESS_METRICS = {
    "process_resident_memory_bytes": "gauge",
    "process_virtual_memory_bytes": "gauge",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "process_cpu_seconds_total": "counter",
    "process_start_time_seconds": "gauge",
    "process_threads": "gauge",
}


def _samples(text: str) -> dict[str, float]:
    """Each unlabelled sample of an exposition, by name."""
    return {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line and not line.startswith("#") and "{" not in line
    }


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads Linux's /proc")
def test_the_exposition_has_the_standard_process_metrics(metrics):
    """No process_* metrics: an fd limit being reached, the memory of two models held during a reload
    or a restart could not be alerted on (obs M1). Prometheus' names, types and units, as its client
    libraries' process collectors export them."""
    import resource  # Unix only

    stop = threading.Event()
    waiting = [threading.Thread(target=stop.wait) for _ in range(8)]  # a thread count no wrong field matches
    for thread in waiting:
        thread.start()
    try:
        text = metrics.exposition()
        tasks = len(os.listdir("/proc/self/task"))
    finally:
        stop.set()
        for thread in waiting:
            thread.join()
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE "))
    assert {name: types.get(name) for name in PROCESS_METRICS} == PROCESS_METRICS
    values = _samples(text)
    assert values["process_max_fds"] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert 0 < values["process_open_fds"] <= values["process_max_fds"]
    assert abs(values["process_open_fds"] - len(os.listdir("/proc/self/fd"))) <= 2
    assert values["process_threads"] >= 9 and values["process_threads"] == pytest.approx(tasks, abs=1)
    assert values["process_resident_memory_bytes"] > 1 << 20
    assert values["process_virtual_memory_bytes"] >= values["process_resident_memory_bytes"]
    assert 0 < values["process_cpu_seconds_total"] <= sum(os.times()[:2]) + 0.1
    started = values["process_start_time_seconds"]
    assert time.time() - 86400 * 7 < started <= time.time()
    assert started == pytest.approx(_samples(metrics.exposition())["process_start_time_seconds"])


def test_process_metrics_a_platform_cannot_give_are_left_out_not_a_failed_scrape(metrics, monkeypatch, tmp_path):
    monkeypatch.setattr(metrics_module, "PROC_SELF", str(tmp_path / "nothing"))
    text = metrics.exposition()
    for name in ("process_resident_memory_bytes", "process_open_fds", "process_threads", "process_start_time_seconds"):
        assert name not in text
    assert "flowrl_requests_total" in text
    assert "process_cpu_seconds_total " in text  # os.times(), everywhere


def test_a_malformed_proc_stat_leaves_its_metrics_out(metrics, monkeypatch, tmp_path):
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "stat").write_bytes(b"1 (x) R 1")  # too few fields
    monkeypatch.setattr(metrics_module, "PROC_SELF", str(tmp_path / "self"))
    text = metrics.exposition()
    assert "process_threads" not in text and "process_cpu_seconds_total " in text


def test_an_unlimited_file_limit_has_no_max_fds(metrics, monkeypatch):
    import resource  # Unix only

    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert "process_max_fds" not in metrics.exposition()


def test_cpu_seconds_are_user_plus_system(metrics, monkeypatch):
    monkeypatch.setattr(metrics_module.os, "times", lambda: os.times_result((1.5, 2.25, 0.0, 0.0, 0.0)))
    assert "\nprocess_cpu_seconds_total 3.75\n" in metrics.exposition()


def test_label_values_are_escaped(metrics):
    metrics.model_labels = lambda: {"version": 'a"b\\c\nd'}
    assert 'flowrl_model_info{version="a\\"b\\\\c\\nd"} 1' in metrics.exposition()


def test_no_model_info_before_a_version():
    assert "flowrl_model_info" not in Metrics(lambda: 0, lambda: "").exposition()


def test_the_metrics_refusal_summary_counts_every_refusal_since_the_last_warning(metrics, monkeypatch, caplog):
    now = [1000.0]
    monkeypatch.setattr(metrics_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    with caplog.at_level(logging.WARNING, logger="flowrl.serve"):
        for _ in range(3):
            metrics.record_metrics_refused("full")
        now[0] += 61
        metrics.record_metrics_refused("full")
    assert [r.getMessage() for r in caplog.records][-1].startswith(
        "refused 3 connections to the metrics endpoint in the last 61 s"
    )


def test_an_unknown_expiry_is_left_out_not_a_failed_scrape():
    date = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    lines = metrics_module._tls_lines(0, 0, None, {"cert": None, "client_ca": date})
    assert [line for line in lines if not line.startswith("#") and "expiry" in line] == [
        f'flowrl_tls_certificate_expiry_timestamp_seconds{{file="client_ca"}} {date.timestamp():.0f}'
    ]


def _closed_by_server(connection: socket.socket, within_s: float, trickle_s: float | None = None) -> bool:
    """Whether the server closes ``connection`` within ``within_s``, while it sends a header line
    every ``trickle_s`` (None: sends nothing)."""
    connection.settimeout(trickle_s or within_s)
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if connection.recv(1) == b"":
                return True
        except TimeoutError:
            pass
        except OSError:  # reset
            return True
        try:
            connection.sendall(b"X-Trickle: 1\r\n")
        except OSError:
            return True
    return False


def test_a_metrics_request_must_come_whole_within_its_deadline_from_accept(metrics, monkeypatch):
    """The timeout was per read: a client sending a header line every few seconds held its connection
    (and one of the few slots) for as long as it liked, and 8 of them made every scrape fail (obs M2)."""
    monkeypatch.setattr(metrics_http, "METRICS_TIMEOUT_S", 1.0)
    httpd = start_metrics_http(metrics, "127.0.0.1", 0)
    try:
        with socket.create_connection(("127.0.0.1", httpd.server_address[1]), timeout=30) as trickling:
            trickling.sendall(b"GET /metrics HTTP/1.1\r\n")
            started = time.monotonic()
            assert _closed_by_server(trickling, within_s=10, trickle_s=0.2)
            assert time.monotonic() - started < 5
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_metrics_endpoint_forgets_each_connection_once_answered(metrics):
    """Each connection's slot, per-address count and deadline are let go once it is answered: kept,
    a scrape every 15 s would leave 5,760 of them a day."""
    httpd = start_metrics_http(metrics, "127.0.0.1", 0)
    try:
        for _ in range(metrics_http.METRICS_CONNECTIONS + 2):  # more scrapes, one after another, than slots
            with urllib.request.urlopen(f"http://127.0.0.1:{httpd.server_address[1]}/metrics", timeout=10) as reply:
                assert reply.status == 200
            # the client has its reply before the handler thread releases the connection's slot
            assert wait_for(lambda: not httpd._peers, timeout_s=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (httpd._open or httpd._peers or httpd._deadlines):
            time.sleep(0.05)
        assert (httpd._open, httpd._peers, httpd._deadlines) == (0, {}, {})
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_client_silent_after_part_of_its_request_is_closed_at_the_deadline(metrics, monkeypatch):
    """A per-read timeout alone would close it a whole timeout after its last line, not at the deadline."""
    monkeypatch.setattr(metrics_http, "METRICS_TIMEOUT_S", 2.0)
    httpd = start_metrics_http(metrics, "127.0.0.1", 0)
    try:
        with socket.create_connection(("127.0.0.1", httpd.server_address[1]), timeout=30) as client:
            time.sleep(1.5)
            sent = time.monotonic()
            client.sendall(b"GET /metrics HTTP/1.1\r\n")  # then nothing
            assert _closed_by_server(client, within_s=10)
            # closed at its deadline, 2 s from accept (about 0.5 s after the line), not a whole METRICS_TIMEOUT_S
            # after the line as a per-read timeout would: timed from the line, a loaded machine's late accept
            # or wake-up has 1.5 s to spare
            assert time.monotonic() - sent < 2.0
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_metrics_endpoint_limits_are_the_documented_ones():
    from doc_pages import doc

    said = " ".join(doc("docs/serve.md").split())
    assert (
        f"serves at most {metrics_http.METRICS_CONNECTIONS} connections at once, and at most "
        f"{metrics_http.METRICS_PER_PEER} from one client address"
    ) in said
    assert f"closes a connection {metrics_http.METRICS_TIMEOUT_S:g} s after accepting it" in said
    assert (metrics_http.METRICS_CONNECTIONS, metrics_http.METRICS_PER_PEER) == (8, 2)
    assert metrics_http.METRICS_TIMEOUT_S == 5.0


def test_a_connection_whose_thread_cannot_start_gives_its_slot_back(metrics, monkeypatch):
    import socketserver

    start = socketserver.ThreadingMixIn.process_request
    failed = []

    def no_thread(self, request, client_address):
        if not failed:
            failed.append(client_address)
            raise RuntimeError("can't start new thread")
        return start(self, request, client_address)

    monkeypatch.setattr(socketserver.ThreadingMixIn, "process_request", no_thread)
    httpd = start_metrics_http(metrics, "127.0.0.1", 0)
    try:
        with socket.create_connection(("127.0.0.1", httpd.server_address[1]), timeout=10) as refused:
            assert refused.recv(1) == b""
        assert failed and (httpd._open, httpd._peers, httpd._deadlines) == (0, {}, {})
    finally:
        httpd.shutdown()
        httpd.server_close()


def _from(address: str) -> socket.socket | None:
    """A TCP socket bound to the local ``address`` (None: this machine cannot use it as a source)."""
    connection = socket.socket()
    try:
        connection.bind((address, 0))
    except OSError:
        connection.close()
        return None
    return connection


def test_one_client_address_cannot_take_every_metrics_connection(metrics, monkeypatch, caplog):
    """8 connections from one client took every slot: refused here, they are counted, and warned of
    at most once a minute (obs M2, L10)."""
    monkeypatch.setattr(metrics_http, "METRICS_TIMEOUT_S", 30.0)
    httpd = start_metrics_http(metrics, "127.0.0.1", 0)
    port = httpd.server_address[1]
    held = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(metrics_http.METRICS_PER_PEER)]
    try:
        for connection in held:
            connection.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the end of the headers
        with caplog.at_level(logging.WARNING, logger="flowrl.serve"):
            for _ in range(2):
                with socket.create_connection(("127.0.0.1", port), timeout=30) as more:
                    assert more.recv(1) == b""  # closed unanswered
        other = _from("127.0.0.2")
        if other is not None:  # another client is served meanwhile
            with other:
                other.settimeout(30)
                other.connect(("127.0.0.1", port))
                other.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                reply = b"".join(iter(lambda: other.recv(65536), b""))
            assert reply.startswith(b"HTTP/1.0 200") and b"flowrl_metrics_connections_refused_total 2" in reply
    finally:
        for connection in held:
            connection.close()
        httpd.shutdown()
        httpd.server_close()
    assert "flowrl_metrics_connections_refused_total 2" in metrics.exposition()
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "127.0.0.1" in warned[0] and "metrics" in warned[0], warned


def test_a_held_back_warning_is_counted_in_the_next_ones_note(monkeypatch):
    """The session-eviction and undecodable-request warnings end saying how many like them were held back."""
    metrics = Metrics(lambda: 0, lambda: "")
    assert metrics.held_back_note("kind") == ""  # the first: nothing held back
    assert metrics.held_back_note("kind") is None and metrics.held_back_note("kind") is None  # within a minute
    monkeypatch.setattr(metrics_module, "LIMIT_WARNING_S", 0.0)  # a minute later: the next one is due
    assert metrics.held_back_note("kind") == " (2 more since the last warning)"
    assert metrics.record_session_evicted() == "" and metrics.sessions_evicted == 1
