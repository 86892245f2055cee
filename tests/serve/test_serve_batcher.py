"""MicroBatcher: one future per request, bounded batches, errors to every waiter; and on a server."""

from __future__ import annotations

import queue
import re
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from tiny_policy import OBS_DIM, documented_noise, write_policy

from flowrl_deploy.client import PolicyClient, ServiceError
from flowrl_deploy.codec import encode
from flowrl_deploy.policy import OnnxPolicy
from flowrl_deploy.proto.flowrl.v1 import policy_pb2 as pb
from flowrl_deploy.proto.flowrl.v1 import policy_pb2_grpc as pb_grpc
from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.serve import batcher as batcher_module
from flowrl_deploy.serve.batcher import MicroBatcher, _Request
from flowrl_deploy.serve.errors import DeadlineExpired


class Recorder:
    """run(obs, noise) = act(obs, noise), by default obs * 2 + noise; blocks the first call
    (``entered`` is set) until released."""

    def __init__(self, act=lambda obs, noise: obs * 2 + noise) -> None:
        self.act = act
        self.sizes: list[int] = []
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, obs, noise):
        if not self.sizes:
            self.entered.set()
            self.release.wait(5)
        self.sizes.append(len(obs))
        return self.act(obs, noise), "v", 1


def _rows(i: int, n: int = 1) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n, 2), i, np.float32), np.full((n, 2), 0.5, np.float32)


def test_queued_requests_share_one_call_and_each_gets_its_rows():
    """Queued requests of 1 + 2 rows share a call; the next (2 rows, beyond max_batch = 4) opens the
    next batch with the one after it (it is carried, not lost: its caller would wait out its
    deadline)."""
    run = Recorder()
    batcher = MicroBatcher(run, max_batch=4, window_us=0)
    first = batcher.submit(*_rows(0))
    assert run.entered.wait(5)  # the worker is now blocked inside the first call
    rows = (1, 1, 2, 2, 1)
    futures = [batcher.submit(*_rows(i, n)) for i, n in enumerate(rows[1:], start=1)]
    run.release.set()
    results = [f.result(timeout=5) for f in (first, *futures)]
    batcher.close()
    assert run.sizes == [1, 3, 3]
    for i, (n, result) in enumerate(zip(rows, results, strict=True)):
        np.testing.assert_array_equal(result.action, np.full((n, 2), 2 * i + 0.5, np.float32))


def test_queued_requests_share_one_call_of_a_deterministic_graph_and_each_gets_its_row(tmp_path):
    """A deterministic graph takes no noise: queued requests are joined without it, and each caller
    gets the graph's action for its own observation."""
    policy = OnnxPolicy(write_policy(tmp_path / "det.onnx", deterministic=True))
    observations = np.random.default_rng(0).standard_normal((6, OBS_DIM)).astype(np.float32)
    run = Recorder(policy.run)
    batcher = MicroBatcher(run, max_batch=8, window_us=0)
    first = batcher.submit(observations[:1], None)
    assert run.entered.wait(5)  # the worker is now blocked inside the first call
    futures = [batcher.submit(observations[i : i + 1], None) for i in range(1, len(observations))]
    run.release.set()
    results = [f.result(timeout=5) for f in (first, *futures)]
    batcher.close()
    assert run.sizes == [1, 5]
    np.testing.assert_allclose(np.concatenate([r.action for r in results]), policy.act(observations), atol=1e-6)


@pytest.mark.parametrize("window_us", [-1, 1_000_001, 10**21])
def test_a_window_beyond_a_second_is_refused(window_us):
    """10**21 µs overflowed the workers' queue timeout: they died, and every request timed out."""
    with pytest.raises(ValueError, match=r"window_us must lie in \[0, 1000000\]"):
        MicroBatcher(Recorder(), max_batch=4, window_us=window_us)


def test_idle_workers_do_not_split_a_batch():
    run = Recorder()
    run.release.set()
    # a 1 s window (the batch runs once full, at its 4th row): a loaded machine's late submits stay in it
    batcher = MicroBatcher(run, max_batch=4, window_us=1_000_000, workers=2)
    futures = []
    for i in range(4):  # arriving one by one while both workers wait on the queue
        futures.append(batcher.submit(*_rows(i)))
        time.sleep(0.01)
    for i, future in enumerate(futures):
        np.testing.assert_array_equal(future.result(timeout=5).action, np.full((1, 2), 2 * i + 0.5, np.float32))
    batcher.close()
    assert run.sizes == [4]  # one worker collects while the other waits its turn


def test_a_request_submitted_while_the_batcher_closes_is_still_answered():
    entered, release = threading.Event(), threading.Event()

    def run(obs, noise):
        if obs[0, 0] == 0:
            entered.set()
            release.wait(5)  # the first request holds the worker
        return obs * 2 + noise, "v", 1

    batcher = MicroBatcher(run, max_batch=4, window_us=0)
    busy = batcher.submit(*_rows(0))
    assert entered.wait(5)
    closing = threading.Thread(target=batcher.close)
    closing.start()
    until = time.monotonic() + 5
    while not batcher._closing and time.monotonic() < until:  # close() has begun: it queues the stop
        time.sleep(0.001)
    late = batcher.submit(*_rows(1))
    try:
        np.testing.assert_array_equal(late.result(timeout=1).action, np.full((1, 2), 2.5, np.float32))
    finally:
        release.set()
        closing.join(timeout=10)
    np.testing.assert_array_equal(busy.result(timeout=5).action, np.full((1, 2), 0.5, np.float32))


def test_close_returns_once_the_requests_queued_before_it_are_answered():
    """The server's stop closes the batcher and then releases the model: a queued request must not
    be left to a worker still running after close() returned."""
    run = Recorder()
    batcher = MicroBatcher(run, max_batch=4, window_us=0)
    busy = batcher.submit(*_rows(0))
    assert run.entered.wait(5)  # the worker is held inside the first call
    queued = batcher.submit(*_rows(1))

    def release_once_closing() -> None:
        until = time.monotonic() + 5
        while not batcher._closing and time.monotonic() < until:
            time.sleep(0.001)
        run.release.set()

    releasing = threading.Thread(target=release_once_closing)
    releasing.start()
    batcher.close()
    assert busy.done() and queued.done()
    releasing.join(timeout=10)
    np.testing.assert_array_equal(queued.result().action, np.full((1, 2), 2.5, np.float32))


def test_a_request_that_fills_the_batch_does_not_wait_for_the_window():
    waits = []

    class WaitsRecorded(queue.SimpleQueue):
        def get(self, block=True, timeout=None):
            waits.append(timeout)
            return super().get(block, timeout)

        def get_nowait(self):
            waits.append(0)
            return super().get_nowait()

    batcher = MicroBatcher(Recorder(), max_batch=2, window_us=1_000_000)
    batcher.close()  # its workers stopped: _collect runs here, on a queue that records its waits
    batcher._queue = WaitsRecorded()
    full = _Request(*_rows(0, n=2), deadline=None)
    assert batcher._collect(full) == ([full], None)
    assert waits == []  # a full batch runs at once: no 1 s wait for a row that cannot fit


def test_an_error_reaches_every_waiter_of_the_batch():
    def failing(obs, noise):
        time.sleep(0.02)
        raise RuntimeError("boom")

    batcher = MicroBatcher(failing, max_batch=8, window_us=20_000)
    futures = [batcher.submit(*_rows(i)) for i in range(3)]
    for future in futures:
        with pytest.raises(RuntimeError, match="boom"):
            future.result(timeout=5)
    batcher.close()


def test_a_failing_wait_figure_leaves_the_batch_answered():
    def broken(waits):
        raise RuntimeError("figure")

    batcher = MicroBatcher(lambda obs, noise: (obs * 2, "v", 1), max_batch=2, on_wait=broken)
    try:
        assert batcher.submit(*_rows(0)).result(timeout=5) is not None
    finally:
        batcher.close()


def test_expired_requests_are_not_run():
    run = Recorder()
    run.release.set()
    batcher = MicroBatcher(run, max_batch=1)
    future = batcher.submit(*_rows(1), deadline=time.monotonic() - 1)
    with pytest.raises(DeadlineExpired):
        future.result(timeout=1)
    assert run.sizes == []


@pytest.mark.parametrize("max_batch", [1, 4])
def test_call_returns_its_rows_and_does_not_run_an_expired_request(max_batch):
    run = Recorder()
    run.release.set()
    batcher = MicroBatcher(run, max_batch=max_batch, window_us=0)
    result = batcher.call(*_rows(3, n=2), deadline=time.monotonic() + 5)
    np.testing.assert_array_equal(result.action, np.full((2, 2), 6.5, np.float32))
    with pytest.raises(DeadlineExpired, match="deadline passed before"):
        batcher.call(*_rows(1), deadline=time.monotonic() - 1)
    batcher.close()
    assert run.sizes == [2]


def test_call_without_workers_runs_in_the_callers_thread_with_no_future(monkeypatch):
    threads = []

    def run(obs, noise):
        threads.append(threading.current_thread())
        return obs, "v", 1

    batcher = MicroBatcher(run, max_batch=1)
    monkeypatch.setattr(batcher, "submit", lambda *args, **kwargs: pytest.fail("max_batch 1 went through a Future"))
    batcher.call(*_rows(1))
    assert threads == [threading.current_thread()]


def test_call_stops_waiting_at_the_deadline_while_the_worker_is_busy():
    run = Recorder()  # holds the first call until released
    batcher = MicroBatcher(run, max_batch=2, window_us=0)
    busy = batcher.submit(*_rows(0, n=2))  # a full batch: the worker runs it alone, and is held there
    assert run.entered.wait(5)
    with pytest.raises(DeadlineExpired, match="before the action was ready"):
        batcher.call(*_rows(1), deadline=time.monotonic() + 0.05)  # queued behind the held batch
    run.release.set()
    busy.result(timeout=5)
    batcher.close()


def test_call_refuses_an_answer_that_came_after_the_deadline(monkeypatch):
    clock = [100.0]  # the batcher's time.monotonic, moved on by the model's run
    monkeypatch.setattr(batcher_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))

    def slow(obs, noise):
        clock[0] += 1.0
        return obs, "v", 1

    with pytest.raises(DeadlineExpired, match="before the action was ready"):
        MicroBatcher(slow, max_batch=1).call(*_rows(1), deadline=100.5)


def test_the_batcher_tells_how_many_requests_wait_and_how_long_each_waited():
    """Nothing exported the queue: a batcher falling behind showed only as latency."""
    run, waits = Recorder(), []
    batcher = MicroBatcher(run, max_batch=2, window_us=0, on_wait=waits.extend)
    assert batcher.depth() == 0
    submitted = time.monotonic()
    first = batcher.submit(*_rows(0))
    assert run.entered.wait(5)  # the worker is now blocked inside the first call
    entered = time.monotonic() - submitted  # the most the first can have waited
    futures = [batcher.submit(*_rows(i)) for i in range(1, 6)]  # 5 more: batches of 2, 2, 1
    assert batcher.depth() == 5
    time.sleep(0.05)
    run.release.set()
    for future in (first, *futures):
        future.result(timeout=5)
    assert batcher.depth() == 0
    batcher.close()
    assert len(waits) == 6 and min(waits) >= 0
    assert sorted(waits)[1] >= 0.05  # every one queued behind the blocked call waited it out
    assert waits[0] <= entered  # the first ran at once, without waiting for the blocked call


def test_a_batcher_without_workers_has_no_queue_to_tell_of():
    waits = []
    run = Recorder(lambda obs, noise: obs)
    run.release.set()  # its first call need not block: nothing else runs
    batcher = MicroBatcher(run, max_batch=1, on_wait=waits.extend)
    batcher.call(*_rows(0))
    assert batcher.depth() == 0 and waits == []


@pytest.mark.parametrize("max_batch", [2, 4])  # 2: the least that batches
def test_a_batched_server_exports_its_queue_depth_and_queue_wait(policy_path, max_batch):
    config = ServeConfig(str(policy_path), port=0, max_batch=max_batch, batch_window_us=2_000, grace_s=0)
    with PolicyServer(config).start() as server, PolicyClient(server.address) as client:
        for i in range(3):
            client.act(np.full(3, i, np.float32))
        text = server.servicer.metrics.exposition()
    assert "# TYPE flowrl_batch_queue_depth gauge" in text and "\nflowrl_batch_queue_depth 0\n" in text
    assert "# TYPE flowrl_batch_wait_seconds histogram" in text
    counts, count = _histogram(text, "flowrl_batch_wait_seconds")
    assert count == 3 and counts[-1] == 3
    # each waited out the 2 ms window, alone: nothing at or under 1 ms
    assert counts[_bucket_index(text, "flowrl_batch_wait_seconds", "0.001")] == 0


def test_an_unbatched_server_exports_no_queue(policy_path):
    with PolicyServer(ServeConfig(str(policy_path), port=0, grace_s=0)).start() as server:
        text = server.servicer.metrics.exposition()
    assert "flowrl_batch_queue_depth" not in text and "flowrl_batch_wait_seconds" not in text


def _bucket_index(text: str, name: str, le: str) -> int:
    edges = re.findall(rf'^{name}_bucket\{{le="([^"]+)"\}}', text, re.M)
    return edges.index(le)


def test_batched_server_matches_onnxruntime_and_reports_metrics(policy_path):
    # a 1 s window and a 0.25 s deadline: the late call is in its handler (where it is counted) long before its
    # deadline, however loaded the machine (a 5 ms deadline in a 20 ms window expired before gRPC ran the handler)
    config = ServeConfig(str(policy_path), port=0, max_batch=8, batch_window_us=1_000_000, metrics_port=0, grace_s=0)
    local = OnnxPolicy(policy_path)
    obs = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
    with PolicyServer(config).start() as server, PolicyClient(server.address) as client:
        with ThreadPoolExecutor(8) as pool:
            actions = list(pool.map(lambda i: client.act(obs[i], seed=i), range(16)))
        for i, action in enumerate(actions):
            noise = documented_noise(i).standard_normal((1, 2), dtype=np.float32)
            expected = local.act(obs[i : i + 1], noise)[0]
            np.testing.assert_allclose(action, expected, atol=1e-6)
        # a deadline shorter than the batching window: DEADLINE_EXCEEDED, not a late answer
        with pytest.raises(ServiceError) as info:
            client.act(obs[0], timeout_s=0.25)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert client.act(obs[0]).shape == (2,)
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    assert 'flowrl_requests_total{method="Act",code="OK"} 17' in text
    assert 'flowrl_requests_total{method="Act",code="DEADLINE_EXCEEDED"} 1' in text
    assert re.search(r"^flowrl_batch_size_count \d+$", text, re.M)  # unlabelled: no empty braces
    assert "flowrl_request_latency_seconds_bucket" in text
    assert 'flowrl_model_info{version="v1-' in text


def _histogram(text: str, name: str, labels: str = "") -> tuple[list[int], int]:
    """The bucket counts of one Prometheus histogram in exposition order, ending with le="+Inf", and its _count."""
    prefix = f"{labels}," if labels else ""
    buckets = re.findall(rf'^{name}_bucket\{{{re.escape(prefix)}le="([^"]+)"\}} (\d+)$', text, re.M)
    assert buckets and buckets[-1][0] == "+Inf", text
    count = re.search(rf"^{name}_count(?:\{{{re.escape(labels)}\}})? (\d+)$", text, re.M)
    assert count, text
    return [int(n) for _, n in buckets], int(count.group(1))


def test_prometheus_histogram_buckets_are_cumulative(policy_path):
    calls = 6
    with PolicyServer(ServeConfig(str(policy_path), port=0, metrics_port=0, grace_s=0)).start() as server:
        with PolicyClient(server.address) as client:
            for i in range(calls):
                client.act(np.full(3, i, np.float32))
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=2).read().decode()
    for name, labels in (
        ("flowrl_request_latency_seconds", 'method="Act"'),
        ("flowrl_batch_size", ""),  # one batch per call: max_batch is 1
        ("flowrl_inference_seconds", ""),
    ):
        counts, count = _histogram(text, name, labels)
        assert counts == sorted(counts), f"{name}: a bucket counts fewer than the one below it: {counts}"
        assert counts[-1] == count == calls, (name, counts, count)


def test_streams_beyond_the_worker_pool_are_refused_not_left_waiting(policy_path):
    with PolicyServer(ServeConfig(str(policy_path), port=0, workers=2, grace_s=0)).start() as server:
        held = [threading.Event() for _ in range(2)]
        request = pb.StreamActRequest(obs=encode(np.zeros(3, np.float32)))

        def requests(stop):
            yield request
            stop.wait(5)

        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.PolicyServiceStub(channel)
            streams = [stub.StreamAct(requests(stop)) for stop in held]
            for stream in streams:
                assert next(stream).status.code == 0
            with pytest.raises(grpc.RpcError) as info:
                next(stub.StreamAct(iter([request]), timeout=5))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for stop in held:
                stop.set()


@pytest.mark.parametrize("max_batch", [1, 4])
def test_a_model_that_returns_too_few_actions_fails_every_waiter_of_its_batch(max_batch):
    """Slicing a short answer would hand one robot another's action, or an empty one."""
    batcher = MicroBatcher(lambda obs, noise: (obs[:1] * 2, "v", 1), max_batch=max_batch, window_us=0)
    future = batcher.submit(*_rows(1, n=2))
    with pytest.raises(RuntimeError, match="model returned 1 actions for 2 observations"):
        future.result(timeout=5)
    with pytest.raises(RuntimeError, match="model returned 1 actions for 2 observations"):
        batcher.call(*_rows(1, n=2))
    batcher.close()
