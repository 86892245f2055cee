"""`flowrl serve` replaying its model from onnxruntime's CUDA graphs, on a real GPU: the replays must
give the CPU's actions (which `flowrl export` verified against torch) at every batch size, to calls
from many threads at once, and a server must say whether it uses them.

These run only where a GPU is present and onnxruntime's CUDA provider loads; elsewhere (CI) they skip,
saying which is missing. tests/serve/test_serve_cuda_graphs.py covers the buffers and the warm-up's
choice without a GPU.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from extras_needed import missing_extras_reason

if reason := missing_extras_reason("train", "export"):  # the policies are exported here
    pytest.skip(reason, allow_module_level=True)

from cuda_here import needs_cuda_provider
from export_fixtures import WIDE, actor_tensors

from flowrl_deploy import ort
from flowrl_deploy.checkpoint import save_checkpoint
from flowrl_deploy.client import PolicyClient
from flowrl_deploy.export import ExportConfig, export_checkpoint
from flowrl_deploy.policy import OnnxPolicy
from flowrl_deploy.serve import PolicyServer, ServeConfig
from flowrl_deploy.serve.cuda_graphs import CudaGraphs
from flowrl_deploy.serve.model import load_model

pytestmark = needs_cuda_provider

CPU = "CPUExecutionProvider"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The same policy exported stochastic, deterministic (its actions depend on obs alone) and plain, and
    another policy's weights (the same contract) exported deterministic."""
    folder = tmp_path_factory.mktemp("graphs")
    checkpoint = save_checkpoint(folder / "step_1", spec=WIDE, actor=actor_tensors(WIDE))
    other = save_checkpoint(folder / "step_2", spec=WIDE, actor=actor_tensors(WIDE, seed=1))
    configs = {
        "stochastic": ExportConfig(steps=10, samples=8),
        "deterministic": ExportConfig(steps=10, samples=8, deterministic=True),
        "plain": ExportConfig(steps=10, samples=8, deterministic=True, optimize=False),
        "fp16": ExportConfig(steps=10, samples=8, deterministic=True, dtype="fp16"),
    }
    files = {name: export_checkpoint(checkpoint, folder / f"{name}.onnx", c).path for name, c in configs.items()}
    files["other"] = export_checkpoint(other, folder / "other.onnx", configs["deterministic"]).path
    return files


def _obs(rows: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((rows, WIDE.obs_dim)) * 3).astype(np.float32)


def test_replays_give_the_cuda_sessions_actions_at_every_batch_size(exports):
    path = exports["stochastic"]
    policy = OnnxPolicy(path, providers=[ort.CUDA])
    graphs = CudaGraphs.for_policy(path.read_bytes(), policy, threads=1, name=str(path))
    rng = np.random.default_rng(1)
    for rows in (1, 2, 3, 64, 1, 17, 100, 5):
        obs, noise = _obs(rows, rows), (rng.standard_normal((rows, WIDE.act_dim)) * 3).astype(np.float32)
        np.testing.assert_allclose(graphs.run(obs, noise), policy.run(obs, noise), atol=1e-5, rtol=1e-4)
        np.testing.assert_array_equal(graphs.run(obs, noise), graphs.run(obs, noise))


def test_a_server_uses_graphs_by_default_and_serves_the_cpus_actions_at_each_batch(exports, caplog):
    path = exports["deterministic"]
    local = OnnxPolicy(path, providers=[CPU])
    with caplog.at_level(logging.INFO, logger="flowrl.serve"):
        server = PolicyServer(ServeConfig(str(path), port=0, grace_s=0, max_batch=16)).start()
    with server, PolicyClient(server.address) as client:
        model = server.servicer.slot.current()
        assert model.graphs is not None, caplog.text
        assert "CUDA graphs; a batch-1 call in" in caplog.text
        for rows in (1, 3, 16, 40):
            obs = _obs(rows, rows)
            np.testing.assert_allclose(client.act(obs), local.act(obs), atol=1e-5, rtol=1e-4)

        def many(seed: int) -> int:  # concurrent calls share the bound buffers: none may get another's rows
            wrong = 0
            for i in range(20):
                obs = _obs(1 + (seed + i) % 5, seed * 100 + i)
                wrong += not np.allclose(client.act(obs), local.act(obs), atol=1e-5, rtol=1e-4)
            return wrong

        with ThreadPoolExecutor(8) as pool:
            assert sum(pool.map(many, range(8))) == 0


def test_a_stochastic_policys_session_gets_the_cpus_action_from_the_graphs(exports):
    path = exports["stochastic"]
    obs = _obs(1, 0)[0]
    with PolicyServer(ServeConfig(str(path), port=0, grace_s=0)).start() as server:
        assert server.servicer.slot.current().graphs is not None
        with PolicyClient(server.address) as client, client.session(period_s=1.0, seed=3) as control:
            served = control.act(obs)
    noise = np.random.Generator(np.random.PCG64(3)).standard_normal((1, WIDE.act_dim), dtype=np.float32)
    local = OnnxPolicy(path, providers=[CPU])
    np.testing.assert_allclose(served, local.act(obs[None], noise)[0], atol=1e-5, rtol=1e-4)


def test_no_cuda_graphs_serves_from_the_session(exports):
    path = exports["deterministic"]
    with PolicyServer(ServeConfig(str(path), port=0, grace_s=0, cuda_graphs=False)).start() as server:
        assert server.servicer.slot.current().graphs is None
        with PolicyClient(server.address) as client:
            np.testing.assert_allclose(
                client.act(_obs(3, 0)), OnnxPolicy(path, providers=[CPU]).act(_obs(3, 0)), atol=1e-5, rtol=1e-4
            )


def test_the_plain_export_is_served_right_with_or_without_graphs(exports, caplog):
    """Its Shape, Slice and Expand nodes run on the CPU: onnxruntime captures the graph or the warm-up
    drops it, saying why; either way the actions are the CPU's."""
    path = exports["plain"]
    with caplog.at_level(logging.INFO, logger="flowrl.serve"):
        server = PolicyServer(ServeConfig(str(path), port=0, grace_s=0, max_batch=4)).start()
    with server, PolicyClient(server.address) as client:
        used = server.servicer.slot.current().graphs is not None
        assert used == ("serving without CUDA graphs" not in caplog.text), caplog.text
        obs = _obs(3, 5)
        np.testing.assert_allclose(client.act(obs), OnnxPolicy(path, providers=[CPU]).act(obs), atol=1e-5, rtol=1e-4)
    print(f"plain export served with CUDA graphs: {used}; log: {caplog.text[-400:]}")


def test_a_call_from_a_fresh_thread_replays_the_warm_ups_graph(exports):
    """onnxruntime keeps CUDA graphs per thread: a handler thread must not capture graphs of its own
    (several ms, and GPU memory, for each thread that ever calls)."""
    path = exports["deterministic"]
    model = load_model(path, path.read_bytes(), "0" * 64, 1, providers=[ort.CUDA], threads=1, cuda_graphs=True)
    model.warm_up((1, 1))
    assert model.graphs is not None
    obs = _obs(1, 0)
    steady_us = min(model.run(obs, None)[1] for _ in range(20))
    firsts = []
    for _ in range(4):
        thread = threading.Thread(target=lambda: firsts.append(model.run(obs, None)[1]))
        thread.start()
        thread.join()
    assert min(firsts) < 3 * steady_us + 200, (firsts, steady_us)


def test_reloads_under_load_fail_no_call_and_keep_the_graphs(exports):
    """A reload captures the new model's graphs while the old one serves: CUDA's global capture mode
    fails a CUDA call of any other thread meanwhile, unless every call runs on the one CUDA thread."""
    first, second = exports["deterministic"], exports["other"]
    errors, stop = [], threading.Event()
    with PolicyServer(ServeConfig(str(first), port=0, grace_s=0, max_batch=4)).start() as server:

        def calls() -> None:
            with PolicyClient(server.address) as client:
                while not stop.is_set():
                    try:
                        client.act(_obs(1 + len(errors) % 3, 0))
                    except Exception as exc:  # any failed call fails the test
                        errors.append(exc)

        threads = [threading.Thread(target=calls) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            with PolicyClient(server.address) as admin:
                for target in (second, first, second):
                    time.sleep(0.2)
                    admin.reload(str(target))
                    assert server.servicer.slot.current().graphs is not None
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    assert not errors, errors[:3]


def test_an_fp16_file_is_served_from_graphs_that_match_its_cuda_session(exports, caplog):
    """The warm-up compares the graphs with the session on the same padded rows: float16 kernels picked
    for other batch sizes round differently, which would drop the graphs of every fp16 file."""
    path = exports["fp16"]
    with caplog.at_level(logging.INFO, logger="flowrl.serve"):
        server = PolicyServer(ServeConfig(str(path), port=0, grace_s=0, max_batch=8)).start()
    with server, PolicyClient(server.address) as client:
        assert server.servicer.slot.current().graphs is not None, caplog.text
        obs = _obs(5, 9)
        served = client.act(obs)
    on_cuda = OnnxPolicy(path, providers=[ort.CUDA]).act(obs)
    half_range = (np.asarray(WIDE.action_high) - np.asarray(WIDE.action_low)) / 2
    assert np.max(np.abs(served - on_cuda) / half_range) < 0.02  # fp16's own bound, against another batch size
