"""`flowrl serve --cuda-graphs` without a GPU: the buckets, the bound buffers' padding and chunks (run on
the CPU provider's buffers), and the warm-up's choice to keep the graphs or serve without them.
tests/serve/test_serve_cuda_graphs_on_a_gpu.py runs the graphs themselves on a GPU."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
from tiny_policy import write_policy

from flowrl_deploy.policy import OnnxPolicy
from flowrl_deploy.serve import PolicyServer, ServeConfig, cuda_graphs
from flowrl_deploy.serve.cuda_graphs import LARGEST_BUCKET, CudaGraphs, bucket_of, buckets_up_to
from flowrl_deploy.serve.model import ServedModel, load_model

CPU = "CPUExecutionProvider"


def test_a_call_runs_in_the_smallest_power_of_two_that_holds_its_rows():
    assert [bucket_of(rows) for rows in (1, 2, 3, 4, 5, 63, 64, 65, 1024, 5000)] == [
        1, 2, 4, 4, 8, 64, 64, 128, 1024, 1024,
    ]  # fmt: skip
    assert buckets_up_to(1) == (1,)
    assert buckets_up_to(48) == (1, 2, 4, 8, 16, 32, 64)
    assert buckets_up_to(4096)[-1] == LARGEST_BUCKET


@pytest.fixture
def on_cpu_buffers(monkeypatch):
    """CudaGraphs with its session and buffers on the CPU: the binding, padding and chunking as on a GPU."""
    monkeypatch.setattr(cuda_graphs, "GRAPH_PROVIDER", CPU)
    monkeypatch.setattr(cuda_graphs, "DEVICE", "cpu")


@pytest.mark.parametrize("deterministic", [False, True])
def test_bound_buffers_give_each_row_the_sessions_action_at_every_batch(tmp_path, on_cpu_buffers, deterministic):
    path = write_policy(tmp_path / "policy.onnx", deterministic=deterministic)
    policy = OnnxPolicy(path, providers=[CPU])
    graphs = CudaGraphs.for_policy(path.read_bytes(), policy, threads=1, name=str(path))
    rng = np.random.default_rng(0)
    c = policy.contract
    for rows in (1, 3, 4, 1, 7, 3, LARGEST_BUCKET + 5):  # smaller calls after larger: no stale rows
        obs = rng.standard_normal((rows, c.obs_dim)).astype(np.float32)
        noise = None if deterministic else rng.standard_normal((rows, c.act_dim)).astype(np.float32)
        np.testing.assert_array_equal(graphs.run(obs, noise), policy.run(obs, noise))
    assert sorted(graphs._buckets) == [1, 4, 8, 1024]  # one bound bucket (one graph) per size met


class _FakeGraphs:
    """Stands in for the replay (which needs a GPU): its actions and speed are what each test sets."""

    def __init__(self, policy: OnnxPolicy, *, offset: float = 0.0, delay_s: float = 0.0, error: str = "") -> None:
        self.session_run, self.offset, self.delay_s, self.error, self.calls = policy.run, offset, delay_s, error, 0
        self.rows_seen: set[int] = set()

    def run(self, obs, noise):
        self.calls += 1
        self.rows_seen.add(len(obs))
        if self.error:
            raise RuntimeError(self.error)
        time.sleep(self.delay_s)
        return self.session_run(obs, noise) + self.offset


def _model(tmp_path, session_delay_s: float = 0.0, **fake) -> tuple[ServedModel, _FakeGraphs]:
    """A served model of the tiny policy with fake graphs; ``session_delay_s`` slows its session's runs
    (as a GPU's are at batch 1, launch-bound: slower than its graphs)."""
    path = write_policy(tmp_path / "policy.onnx")
    policy = load_model(path, path.read_bytes(), "0" * 64, 1, providers=[CPU], threads=1).policy
    graphs = _FakeGraphs(policy, **fake)
    session_run = policy.run
    graphs.session_threads = []  # type: ignore[attr-defined]

    def slowed(obs, noise):
        graphs.session_threads.append(threading.current_thread().name)  # type: ignore[attr-defined]
        time.sleep(session_delay_s)
        return session_run(obs, noise)

    policy.run = slowed  # type: ignore[method-assign]
    return ServedModel(path, policy, 1, "0" * 64, graphs), graphs  # type: ignore[arg-type]


def test_graphs_that_are_exact_and_faster_serve_the_calls(tmp_path):
    model, graphs = _model(tmp_path, session_delay_s=0.002)
    said = model.warm_up((1, 8), graph_rows=20)
    assert model.graphs is graphs
    assert said.startswith("CUDA graphs; a batch-1 call in ") and "µs without graphs" in said
    assert graphs.rows_seen >= {1, 2, 4, 8, 16, 32}  # every bucket a call of up to 20 rows runs in, at warm-up
    before = graphs.calls
    model.run(np.zeros((1, 3), np.float32), np.zeros((1, 2), np.float32))
    assert graphs.calls == before + 1


@pytest.mark.parametrize(
    ("fake", "warning"),
    [
        ({"offset": 1e-3}, "their actions differ from the session's by up to 0.001 at a batch of 1"),
        ({"delay_s": 0.01}, "they are no faster ("),
        ({"error": "CUDA failure 900: operation not permitted when stream is capturing"}, "onnxruntime could not"),
    ],
)
def test_graphs_that_differ_are_slower_or_fail_are_dropped_with_a_warning(tmp_path, caplog, fake, warning):
    model, graphs = _model(tmp_path, **fake)
    with caplog.at_level(logging.WARNING, logger="flowrl.serve"):
        said = model.warm_up((1, 4))
    assert model.graphs is None
    assert said.startswith("a batch-1 call in ")
    assert f"policy.onnx: serving without CUDA graphs: {warning}" in caplog.text
    before = graphs.calls
    graphs.session_threads.clear()
    action, _ = model.run(np.zeros((1, 3), np.float32), np.zeros((1, 2), np.float32))
    assert graphs.calls == before
    # still on the CUDA thread: another model's capture (a reload) must not meet a call of this one
    assert graphs.session_threads == ["flowrl-cuda_0"]
    np.testing.assert_array_equal(action, model.policy.run(np.zeros((1, 3), np.float32), np.zeros((1, 2), np.float32)))


def test_on_the_cpu_the_server_serves_without_graphs_whatever_the_flag(tmp_path):
    path = write_policy(tmp_path / "policy.onnx")
    for flag in (True, False):
        with PolicyServer(ServeConfig(str(path), port=0, grace_s=0, cuda_graphs=flag)).start() as server:
            assert server.servicer.slot.current().graphs is None


def test_the_flag_is_a_boolean_setting(tmp_path):
    from flowrl_deploy.errors import FlowRLError

    path = write_policy(tmp_path / "policy.onnx")
    assert ServeConfig(str(path)).cuda_graphs is True
    with pytest.raises(FlowRLError, match="--cuda-graphs must be"):
        ServeConfig(str(path), cuda_graphs="no")  # type: ignore[arg-type]


def test_a_cuda_model_without_graphs_still_runs_on_the_cuda_thread(tmp_path, monkeypatch, caplog):
    """Graphs refused (or a --batch N file, which gets none): a reload to a model with graphs captures
    while this one serves, and CUDA's global capture mode fails a call of another thread meanwhile."""
    from flowrl_deploy.errors import FlowRLError
    from flowrl_deploy.serve import model as model_module

    def refused(*args, **kwargs):
        raise FlowRLError("no graphs here")

    monkeypatch.setattr(model_module, "CUDA", CPU)  # the CPU provider stands in for CUDA's
    monkeypatch.setattr(CudaGraphs, "for_policy", refused)
    seen, session_run = [], OnnxPolicy.run

    def recorded(self, obs, noise):
        seen.append(threading.current_thread().name)
        return session_run(self, obs, noise)

    monkeypatch.setattr(OnnxPolicy, "run", recorded)
    path = write_policy(tmp_path / "policy.onnx")
    with caplog.at_level(logging.WARNING, logger="flowrl.serve"):
        served = load_model(path, path.read_bytes(), "0" * 64, 1, providers=[CPU], threads=1, cuda_graphs=True)
    assert "serving without CUDA graphs: onnxruntime refused them (no graphs here)" in caplog.text
    served.warm_up((1, 4))
    served.run(np.zeros((2, 3), np.float32), np.zeros((2, 2), np.float32))
    assert served.graphs is None and seen and set(seen) == {"flowrl-cuda_0"}


def test_a_second_warm_up_keeps_the_graphs_it_checks_again(tmp_path):
    model, graphs = _model(tmp_path, session_delay_s=0.002)
    model.warm_up((1, 2))
    assert model.warm_up((1, 2)).startswith("CUDA graphs; ")
    assert model.graphs is graphs


def test_a_replay_that_fails_after_the_warm_up_falls_back_to_the_session_once(tmp_path, caplog):
    """A call whose replay fails still gets its action, from the session, and so does every later one:
    the graphs are dropped with one warning (graphsreview M2: the call failed, the session right there)."""
    model, graphs = _model(tmp_path, session_delay_s=0.002)
    model.warm_up((1, 4))
    assert model.graphs is graphs
    graphs.error = "CUDA failure 700: an illegal memory access was encountered"
    obs, noise = np.full((3, 3), 0.5, np.float32), np.full((3, 2), 0.25, np.float32)
    with caplog.at_level(logging.WARNING, logger="flowrl.serve"):
        results = [model.run(obs, noise)[0] for _ in range(3)]
    for action in results:
        np.testing.assert_array_equal(action, model.policy.run(obs, noise))
    assert model.graphs is None and graphs.calls  # tried once, then no more
    calls = graphs.calls
    model.run(obs, noise)
    assert graphs.calls == calls
    warnings = [r.getMessage() for r in caplog.records if "replay failed" in r.getMessage()]
    assert warnings == [
        f"{model.path}: a CUDA graph's replay failed (CUDA failure 700: an illegal memory access was "
        f"encountered): serving {model.version} without CUDA graphs from now on"
    ]


def test_a_failure_the_session_shares_is_the_calls_error(tmp_path):
    """A CUDA error that sticks to the context fails the session too: the call fails with the session's
    error (the servicer's INTERNAL), not with an action from nowhere."""
    model, graphs = _model(tmp_path, session_delay_s=0.002)
    model.warm_up((1, 2))
    graphs.error = "CUDA failure 700"

    def broken(obs, noise):
        raise RuntimeError("CUDA failure 700 (sticky)")

    model._session_run = broken
    with pytest.raises(RuntimeError, match="sticky"):
        model.run(np.zeros((1, 3), np.float32), np.zeros((1, 2), np.float32))
    assert model.graphs is None


def test_calls_of_many_threads_whose_replays_fail_all_get_actions_and_one_warning(tmp_path, caplog):
    model, graphs = _model(tmp_path, session_delay_s=0.002)
    model.warm_up((1, 2))
    graphs.error = "replay failed"
    graphs.delay_s = 0.0
    obs, noise = np.zeros((1, 3), np.float32), np.zeros((1, 2), np.float32)
    got, start = [], threading.Barrier(8)

    def call() -> None:
        start.wait()
        got.append(model.run(obs, noise)[0])

    with caplog.at_level(logging.WARNING, logger="flowrl.serve"):
        threads = [threading.Thread(target=call) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert len(got) == 8 and all(np.array_equal(action, got[0]) for action in got)
    assert sum("replay failed (" in r.getMessage() for r in caplog.records) == 1
