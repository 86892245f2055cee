"""Dynamic micro-batching: concurrent requests from many robots share one onnxruntime call.

Like Ray Serve's ``_BatchQueue``: one future per request, a bounded wait (``window_us``) after
the first request for more to arrive, concurrent requests combined up to ``max_batch`` rows per
call (a request is never split: one of more rows than ``max_batch`` runs alone, as one call), one
result slice per request, and an error goes to every waiter of its batch. ``workers`` threads form and run
batches concurrently (one per core keeps every core busy: onnxruntime's per-row cost at batch
8-16 is only about half its batch-1 cost on a small CPU). With ``max_batch == 1`` requests run
in the caller's thread (no hand-off), which gives the lowest latency for a single robot.
Tried and not kept (session 16, docs/benchmarks.md): a leader/follower batcher, where a request that
finds a batch slot free runs in its own gRPC thread. It cut a lone batched call's CPU from about 50 to
18 µs but formed smaller batches, and served no more robots: the workers' hand-off delay is what lets
concurrent requests meet in one batch on a small CPU.

With workers, :meth:`MicroBatcher.depth` is how many requests wait for their batch to run, and
``on_wait`` is given how long each waited (from :meth:`~MicroBatcher.submit` to its batch's run:
the window, and any wait for a free worker): Prometheus' ``flowrl_batch_queue_depth`` and
``flowrl_batch_wait_seconds``.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import numpy as np

from flowrl_deploy.serve.errors import DeadlineExpired

MAX_WINDOW_US = 1_000_000
"""The longest batching window, 1 s. A request alone in its batch waits the whole window, so the
window is latency every caller may pay: a control loop (50-1000 Hz) misses every deadline long
before 1 s, and a window of 10**21 µs overflowed the workers' timer, which killed them."""

# (obs [B, obs_dim], noise [B, act_dim] | None) -> (actions [B, act_dim], version, inference µs)
RunBatch = Callable[[np.ndarray, "np.ndarray | None"], tuple[np.ndarray, str, int]]


@dataclass
class BatchResult:
    action: np.ndarray
    model_version: str
    inference_us: int


@dataclass
class _Request:
    obs: np.ndarray
    noise: np.ndarray | None
    deadline: float | None
    """time.monotonic() after which the request is not worth running."""
    future: Future = field(default_factory=Future)
    queued: float | None = None
    """time.monotonic() when it was queued for a worker (None: it runs in its caller's thread)."""


_STOP = object()


class MicroBatcher:
    """Groups concurrent :meth:`submit` calls into batches for ``run``."""

    def __init__(
        self,
        run: RunBatch,
        *,
        max_batch: int = 1,
        window_us: int = 0,
        workers: int = 1,
        on_wait: Callable[[list[float]], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if not 0 <= window_us <= MAX_WINDOW_US:
            raise ValueError(f"window_us must lie in [0, {MAX_WINDOW_US}], got {window_us}")
        self._run = run
        self.on_wait = on_wait
        """Given, for each batch a worker runs, how long each of its requests waited in the queue (s)."""
        self._waiting = 0
        self._waiting_lock = threading.Lock()
        self.max_batch = max_batch
        self.window_s = window_us / 1e6
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._collecting = threading.Lock()
        self._carry: object = None
        """A request that did not fit the last batch: it opens the next one."""
        self._closing = False
        self._admission = threading.Lock()
        """Orders :meth:`submit` against :meth:`close`: nothing is queued behind the workers' stop."""
        self._workers = [
            threading.Thread(target=self._loop, name=f"flowrl-batcher-{i}", daemon=True)
            for i in range(max(1, workers) if max_batch > 1 else 0)
        ]
        for worker in self._workers:
            worker.start()

    def call(self, obs: np.ndarray, noise: np.ndarray | None, deadline: float | None = None) -> BatchResult:
        """Run these rows and wait for them; raise :class:`DeadlineExpired` once ``deadline`` passes.

        With ``max_batch == 1`` they run right here, with no future or queue between the caller and
        onnxruntime: on a 1-core server that hand-off cost 25-40 µs of a 560 µs request."""
        if self.max_batch == 1:
            if _expired(deadline):
                raise DeadlineExpired("deadline passed before inference started")
            result = BatchResult(*self._checked_run(obs, noise))
        else:
            future = self.submit(obs, noise, deadline)
            try:
                result = future.result(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                raise DeadlineExpired("deadline passed before the action was ready") from None
        if _expired(deadline):
            raise DeadlineExpired("deadline passed before the action was ready")
        return result

    def submit(self, obs: np.ndarray, noise: np.ndarray | None, deadline: float | None = None) -> Future:
        """A future of the :class:`BatchResult` for these rows."""
        request = _Request(obs, noise, deadline)
        with self._admission:
            queued = bool(self._workers) and not self._closing
            if queued:
                with self._waiting_lock:
                    self._waiting += 1
                request.queued = time.monotonic()
                self._queue.put(request)
        if not queued:  # no workers, or closing: run in the caller's thread
            self._execute([request])
        return request.future

    def depth(self) -> int:
        """Requests queued for a worker whose batch has not begun to run (0 without workers)."""
        return self._waiting

    def close(self) -> None:
        """Finish the queued requests, then stop the workers; later requests run in their caller."""
        with self._admission:
            self._closing = True
            for _ in self._workers:
                self._queue.put(_STOP)
        for worker in self._workers:
            worker.join(timeout=10)
        self._workers = []

    def _loop(self) -> None:
        while True:
            # One worker collects at a time, so batches fill up instead of splitting between
            # workers; the others run their batch meanwhile.
            with self._collecting:
                first, self._carry = self._carry or self._queue.get(), None
                if first is _STOP:
                    return
                batch, self._carry = self._collect(first)
            self._execute(batch)

    def _collect(self, first: _Request) -> tuple[list[_Request], object]:
        batch, rows = [first], len(first.obs)
        until = time.monotonic() + self.window_s
        while rows < self.max_batch:
            try:
                remaining = until - time.monotonic()
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP or rows + len(item.obs) > self.max_batch:
                return batch, item
            batch.append(item)
            rows += len(item.obs)
        return batch, None

    def _checked_run(self, obs: np.ndarray, noise: np.ndarray | None) -> tuple[np.ndarray, str, int]:
        action, version, inference_us = self._run(obs, noise)
        if len(action) != len(obs):
            raise RuntimeError(f"model returned {len(action)} actions for {len(obs)} observations")
        return action, version, inference_us

    def _execute(self, batch: list[_Request]) -> None:
        now = time.monotonic()
        waits = [now - request.queued for request in batch if request.queued is not None]
        if waits:
            with self._waiting_lock:
                self._waiting -= len(waits)
            if self.on_wait is not None:
                with contextlib.suppress(Exception):  # a figure is no reason to leave a batch unanswered
                    self.on_wait(waits)
        live = []
        for request in batch:
            if _expired(request.deadline, now):
                request.future.set_exception(DeadlineExpired("deadline passed before inference started"))
            else:
                live.append(request)
        if not live:
            return
        try:
            obs = live[0].obs if len(live) == 1 else np.concatenate([r.obs for r in live])
            noise = None
            if live[0].noise is not None:
                noise = live[0].noise if len(live) == 1 else np.concatenate([r.noise for r in live])
            action, version, inference_us = self._checked_run(obs, noise)
        except BaseException as exc:
            for request in live:
                request.future.set_exception(exc)
            return
        start = 0
        for request in live:
            end = start + len(request.obs)
            request.future.set_result(BatchResult(action[start:end], version, inference_us))
            start = end


def _expired(deadline: float | None, now: float | None = None) -> bool:
    return deadline is not None and (time.monotonic() if now is None else now) > deadline
