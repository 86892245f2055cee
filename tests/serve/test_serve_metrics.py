"""Metrics: the figures of GetStats and the Prometheus buckets, checked on known samples; the
/metrics endpoint on IPv4 and IPv6 hosts."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from flowrl_deploy.serve.metrics import Metrics, start_metrics_http


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
