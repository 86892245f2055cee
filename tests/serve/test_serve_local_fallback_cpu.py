"""A ControlSession's local fallback model ran on the default providers (CUDA on a robot with a GPU:
TF32, not the CPU server's draw, competing with the GPU) and made its first run on the first tick that
fell back, when the robot was already late. It runs on the CPU and is warmed up when the session is made."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_policy import ACT_DIM

from flowrl_deploy import ort
from flowrl_deploy import policy as policy_module
from flowrl_deploy.noise import draw_noise, session_noise

OBS = np.array([0.3, -0.2, 0.1], np.float32)
MISS_S = 1e-7
"""A deadline no reply can meet: the tick is a miss, so the session acts on its fallback."""


@pytest.fixture
def gpu_present(monkeypatch):
    monkeypatch.setattr(ort, "cuda_device_present", lambda: True)


def test_the_local_fallback_runs_on_the_cpu_even_with_a_gpu(client, policy_path, gpu_present, monkeypatch):
    asked = []
    real = policy_module.make_session

    def recording(model, **kwargs):
        asked.append(kwargs.get("providers"))
        return real(model, **kwargs)

    monkeypatch.setattr(policy_module, "make_session", recording)
    with client.session(period_s=0.5, seed=1, fallback="local", local_model=str(policy_path)) as control:
        assert asked == [["CPUExecutionProvider"]]
        assert control.local.session.get_providers() == ["CPUExecutionProvider"]


def test_the_local_fallback_is_warmed_up_before_the_first_tick(client, policy_path, local, monkeypatch):
    runs = []
    real = policy_module.OnnxPolicy.run

    def counted(self, obs, noise):
        runs.append((obs.copy(), None if noise is None else noise.copy()))
        return real(self, obs, noise)

    monkeypatch.setattr(policy_module.OnnxPolicy, "run", counted)
    with client.session(
        period_s=0.5, deadline_s=MISS_S, seed=4, fallback="local", local_model=str(policy_path)
    ) as control:
        assert len(runs) == 1  # the warm-up, before any tick
        obs, noise = runs[0]
        assert obs.shape == (1, 3) and noise is not None and noise.shape == (1, ACT_DIM)
        # the warm-up draws no noise: the first fallback tick still acts on the server's first draw
        expected = real(local, OBS[None], draw_noise(session_noise(4), 1, ACT_DIM))[0]
        np.testing.assert_array_equal(control.act(OBS), expected)
        assert control.timings[-1].source == "local" and len(runs) == 2
