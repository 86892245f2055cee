"""With the real exporter: a random FlowActor checkpoint served directly and as ONNX, and a
closed-loop `run_control` whose return equals `flowrl eval`-style evaluation of the same file."""

from __future__ import annotations

import gc
import time
from types import SimpleNamespace

import numpy as np
import pytest

from flowrl_deploy.client import PolicyClient
from flowrl_deploy.serve import PolicyServer, ServeConfig

torch = pytest.importorskip("torch")
pytest.importorskip("dm_control")

ENV_ID = "dmc:cartpole-swingup"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from flowrl_deploy.checkpoint import save_checkpoint
    from flowrl_deploy.spec import PolicySpec
    from flowrl_deploy.train.actor import FlowActor

    torch.manual_seed(0)
    spec = PolicySpec(obs_dim=5, act_dim=1, action_low=(-1.0,), action_high=(1.0,), hidden=32, env_id=ENV_ID)
    actor = FlowActor(spec)
    rng = np.random.default_rng(0)  # every tensor moved off its initialisation (zero biases, LayerNorm 1 and 0)
    tensors = {
        k: (v.detach().numpy() + 0.2 * rng.standard_normal(v.shape)).astype(np.float32)
        for k, v in sorted(actor.state_dict().items())
    }
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "step_1", spec=spec, actor=tensors)


@pytest.fixture(scope="module")
def onnx_file(checkpoint, tmp_path_factory):
    from flowrl_deploy.export import ExportConfig, export_checkpoint

    out = tmp_path_factory.mktemp("onnx") / "policy.onnx"
    export_checkpoint(checkpoint, out, ExportConfig(steps=10, samples=8))
    return out


@pytest.mark.slow  # the export verifies against torch (~10 s)
def test_a_checkpoint_is_exported_on_the_fly(checkpoint, onnx_file):
    """With the exporter `flowrl serve` gives the server (serve itself never imports it)."""
    from flowrl_deploy.export import export_for_serving
    from flowrl_deploy.noise import draw_noise, session_noise
    from flowrl_deploy.policy import OnnxPolicy

    obs = np.linspace(-1, 1, 5, dtype=np.float32)
    with (
        PolicyServer(ServeConfig(str(checkpoint), port=0, steps=10, grace_s=0), export_for_serving).start() as server,
        PolicyClient(server.address) as client,
    ):
        info = client.spec()
        action = client.act(obs, seed=4)
    assert info.flow_steps == 10 and info.env_id == ENV_ID and info.takes_noise
    expected = OnnxPolicy(onnx_file).act(obs[None], draw_noise(session_noise(4), 1, 1))[0]
    np.testing.assert_allclose(action, expected, atol=1e-5)


def test_control_return_matches_evaluation_of_the_same_onnx_file(onnx_file, monkeypatch):
    from flowrl_deploy.policy import SeededPolicy
    from flowrl_deploy.train import control
    from flowrl_deploy.train.evaluate import evaluate

    # A 2 s deadline, never missed even on a busy machine (a miss would act on the fallback), needs
    # a period as long; the loop's pacing sleeps are skipped, so its 1000 ticks run back to back.
    monkeypatch.setattr(control, "time", SimpleNamespace(perf_counter=time.perf_counter, sleep=lambda _: None))
    with PolicyServer(ServeConfig(str(onnx_file), port=0, grace_s=0)).start() as server:
        report = control.run_control(server.address, None, hz=0.5, episodes=1, seed=3, deadline_s=2.0)
    assert report.deadline_misses == 0 and report.steps == 1000
    expected = evaluate(SeededPolicy(onnx_file, 3), ENV_ID, 1, seed=3)
    assert report.returns == pytest.approx(list(expected.returns), rel=1e-5)


def test_the_control_loop_runs_with_the_setup_frozen_out_of_garbage_collection(onnx_file, monkeypatch):
    """A full collection over the simulator's and gRPC's objects took 20-30 ms: longer than a tick."""
    from flowrl_deploy.train import control

    frozen_at_steps: list[bool] = []
    make_env = control.make_env
    before = gc.get_freeze_count()  # CPython 3.12 keeps its immortal objects frozen: not 0 there

    def recording_env(*args, **kwargs):
        env = make_env(*args, **kwargs)
        step = env.step

        def recording_step(action):
            frozen_at_steps.append(gc.get_freeze_count() > before)
            return step(action)

        env.step = recording_step
        return env

    monkeypatch.setattr(control, "make_env", recording_env)
    with PolicyServer(ServeConfig(str(onnx_file), port=0, grace_s=0)).start() as server:
        report = control.run_control(server.address, None, hz=2000, episodes=2, seed=3, max_steps=20)
    assert report.steps == 40 and frozen_at_steps == [True] * 40
    assert gc.get_freeze_count() <= before, "run_control left objects frozen after it returned"
