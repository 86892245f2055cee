"""An exported policy on onnxruntime's CUDA provider, on a real GPU: what a GPU host's `flowrl serve`
runs by default. The actions must be the CPU's, which `flowrl export` verified against torch.

These run only where a GPU is present and onnxruntime's CUDA provider loads; elsewhere (CI) they
skip, saying which of the two is missing. tests/core/test_runtime_cuda_sessions.py covers the same
code paths on a machine without a GPU, with the provider's start simulated.
"""

from __future__ import annotations

import numpy as np
import pytest
from cuda_here import needs_cuda_provider
from export_fixtures import WIDE, actor_tensors

from flowrl_deploy import ort
from flowrl_deploy.checkpoint import save_checkpoint
from flowrl_deploy.client import PolicyClient
from flowrl_deploy.export import ExportConfig, export_checkpoint
from flowrl_deploy.policy import OnnxPolicy
from flowrl_deploy.serve import PolicyServer, ServeConfig

CPU = "CPUExecutionProvider"


pytestmark = needs_cuda_provider


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu")
    checkpoint = save_checkpoint(folder / "step_1", spec=WIDE, actor=actor_tensors(WIDE))
    return export_checkpoint(checkpoint, folder / "policy.onnx", ExportConfig(steps=10, samples=8)).path


def test_a_gpu_host_runs_a_policy_on_cuda_by_default(policy_file):
    assert ort.default_providers()[0] == ort.CUDA
    assert OnnxPolicy(policy_file).session.get_providers()[0] == ort.CUDA


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_cuda_actions_are_the_cpu_actions(policy_file, batch):
    on_gpu, on_cpu = OnnxPolicy(policy_file, providers=[ort.CUDA]), OnnxPolicy(policy_file, providers=[CPU])
    rng = np.random.default_rng(batch)
    obs = (rng.standard_normal((batch, WIDE.obs_dim)) * 5).astype(np.float32)
    noise = (rng.standard_normal((batch, WIDE.act_dim)) * 3).astype(np.float32)
    np.testing.assert_allclose(on_gpu.act(obs, noise), on_cpu.act(obs, noise), atol=1e-5, rtol=1e-4)
    assert np.array_equal(on_gpu.act(obs, noise), on_gpu.act(obs, noise))


def test_a_server_on_a_gpu_host_serves_from_cuda_what_the_cpu_computes(policy_file):
    obs = np.random.default_rng(0).standard_normal(WIDE.obs_dim).astype(np.float32)
    with PolicyServer(ServeConfig(str(policy_file), port=0, grace_s=0)).start() as server:
        assert server.servicer.slot.current().policy.session.get_providers()[0] == ort.CUDA
        with PolicyClient(server.address) as client, client.session(period_s=1.0, seed=3) as control:
            served = control.act(obs)
    local = OnnxPolicy(policy_file, providers=[CPU])
    noise = np.random.Generator(np.random.PCG64(3)).standard_normal((1, WIDE.act_dim), dtype=np.float32)
    np.testing.assert_allclose(served, local.act(obs[None], noise)[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("dtype", "optimize"), [("fp16", True), ("fp16", False), ("fp32", True)])
def test_the_exports_parity_holds_on_cuda(monkeypatch, dtype, optimize):
    """The export's own verification, run on the CUDA provider: fp16's bounds were measured on the CPU
    provider, which computes float16 nodes in float32; the GPU computes them in float16."""
    from flowrl_deploy.export import verify
    from flowrl_deploy.export.graph import VelocityWeights, build_policy_graph

    monkeypatch.setattr(verify, "make_session", lambda model, providers: ort.make_session(model, providers=[ort.CUDA]))
    actor = actor_tensors(WIDE)
    model = build_policy_graph(VelocityWeights.from_actor(actor, WIDE), WIDE, steps=10, solver="midpoint",
                               optimize=optimize, dtype=dtype)  # fmt: skip
    report = verify.verify_parity(model, actor, WIDE, steps=10, solver="midpoint", deterministic=False, batch=None,
                                  dtype=dtype, samples=64)  # fmt: skip
    assert report.passed, report.summary()
    print(f"{dtype} {'optimized' if optimize else 'plain'} on CUDA: {report.summary()}")
