"""The unrolled graph against the torch sampler and against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from export_fixtures import SPEC, actor_tensors

from flowrl_deploy.export.graph import VelocityWeights, build_policy_graph, schedule
from flowrl_deploy.export.verify import reference_actor
from flowrl_deploy.ort import make_session


def run(model, obs, noise=None):
    session = make_session(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"obs": obs} if noise is None else {"obs": obs, "noise": noise}
    return session.run(["action"], feeds)[0]


def inputs(batch, seed=1, obs_scale=1.0, noise_scale=1.0):
    rng = np.random.default_rng(seed)
    obs = (rng.normal(size=(batch, SPEC.obs_dim)) * obs_scale).astype(np.float32)
    noise = (rng.normal(size=(batch, SPEC.act_dim)) * noise_scale).astype(np.float32)
    return obs, noise


def graph(**kwargs):
    options = {"steps": 4, "solver": "midpoint"} | kwargs
    return build_policy_graph(VelocityWeights.from_actor(actor_tensors(), SPEC), SPEC, **options)


@pytest.mark.parametrize("optimize", [True, False])
@pytest.mark.parametrize("solver", ["midpoint", "euler"])
@pytest.mark.parametrize("steps", [1, 2, 7])
@pytest.mark.parametrize("batch", [1, 3, 33])
def test_matches_torch_sampler(reference, optimize, solver, steps, batch):
    obs, noise = inputs(batch, obs_scale=3.0, noise_scale=2.0)
    action = run(graph(steps=steps, solver=solver, optimize=optimize), obs, noise)
    with torch.no_grad():
        expected = reference(torch.from_numpy(obs), torch.from_numpy(noise), steps, solver).numpy()
    np.testing.assert_allclose(action, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("optimize", [True, False])
def test_matches_torch_sampler_at_initialisation(optimize):
    """torch's own initialisation (zero biases, LayerNorm gain 1 and shift 0), as a fresh run exports it."""
    actor = actor_tensors(perturbed=False)
    model = build_policy_graph(
        VelocityWeights.from_actor(actor, SPEC), SPEC, steps=3, solver="midpoint", optimize=optimize
    )
    obs, noise = inputs(7, obs_scale=3.0, noise_scale=2.0)
    with torch.no_grad():
        expected = reference_actor(actor, SPEC)(torch.from_numpy(obs), torch.from_numpy(noise), 3, "midpoint").numpy()
    np.testing.assert_allclose(run(model, obs, noise), expected, atol=1e-5, rtol=1e-4)


def test_constant_velocity_integrates_exactly():
    """v ≡ c (all weights zero but the output bias): a_1 = clamp(noise) + c, whatever the solver."""
    zeros = {k: np.zeros_like(v) for k, v in actor_tensors().items()}
    c = np.array([0.5, -0.25, 1.0], np.float32)
    zeros["velocity.net.6.bias"] = c
    weights = VelocityWeights.from_actor(zeros, SPEC)
    obs, noise = inputs(4, noise_scale=2.0)
    low, high = np.array(SPEC.action_low), np.array(SPEC.action_high)
    expected = np.tanh(np.clip(noise, -1, 1) + c) * (high - low) / 2 + (high + low) / 2
    for solver in ("midpoint", "euler"):
        for optimize in (True, False):
            model = build_policy_graph(weights, SPEC, steps=5, solver=solver, optimize=optimize)
            np.testing.assert_allclose(run(model, obs, noise), expected, atol=1e-6)


def test_midpoint_schedule_evaluates_at_half_steps():
    times = [float(e.t) for e in schedule(4, "midpoint")]
    np.testing.assert_allclose(times, [0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875], atol=1e-7)
    assert [float(e.t) for e in schedule(4, "euler")] == [0, 0.25, 0.5, 0.75]


def test_plain_and_optimized_graphs_agree():
    obs, noise = inputs(16, obs_scale=10.0, noise_scale=5.0)
    for solver in ("midpoint", "euler"):
        plain = run(graph(optimize=False, solver=solver, steps=10), obs, noise)
        optimized = run(graph(optimize=True, solver=solver, steps=10), obs, noise)
        np.testing.assert_allclose(optimized, plain, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("optimize", [True, False])
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_deterministic_graph_equals_noise_graph_fed_zeros(optimize, dtype):
    obs, _ = inputs(6)
    deterministic = graph(deterministic=True, optimize=optimize, dtype=dtype)
    assert [i.name for i in deterministic.graph.input] == ["obs"]
    zeros = np.zeros((6, SPEC.act_dim), np.float32)
    with_noise = graph(optimize=optimize, dtype=dtype)
    np.testing.assert_allclose(run(deterministic, obs), run(with_noise, obs, zeros), atol=1e-6)


@pytest.mark.parametrize("optimize", [True, False])
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_actions_stay_in_bounds_for_extreme_observations(optimize, dtype):
    """fp16: observations past float16's range (±65504) are saturated, not cast to inf (NaN actions)."""
    obs, noise = inputs(8, noise_scale=100.0)
    obs[:4] *= 1e6
    obs[4:] = np.float32(-3e7)
    action = run(graph(optimize=optimize, dtype=dtype), obs, noise)
    assert np.all(np.isfinite(action))
    assert np.all(action >= np.array(SPEC.action_low, np.float32))
    assert np.all(action <= np.array(SPEC.action_high, np.float32))


def test_graph_is_unrolled_with_each_weight_stored_once():
    model = graph(steps=10)
    assert not {n.op_type for n in model.graph.node} & {"Loop", "Scan", "If"}
    big = [i for i in model.graph.initializer if len(i.dims) == 2 and min(i.dims) > 1]
    assert sorted(i.name for i in big) == ["w1.action", "w1.obs", "w2", "w_out"]


@pytest.mark.parametrize("optimize", [True, False])
@pytest.mark.parametrize("solver", ["midpoint", "euler"])
@pytest.mark.parametrize("deterministic", [True, False])
def test_every_stored_tensor_is_used(optimize, solver, deterministic):
    """A deterministic one-step Euler graph never multiplies the state by W_a: a stored, unused W_a made
    onnxruntime log a 'Removing initializer' warning in every user's program that loaded the file."""
    model = graph(steps=1, solver=solver, optimize=optimize, deterministic=deterministic)
    used = {name for node in model.graph.node for name in node.input}
    assert [i.name for i in model.graph.initializer if i.name not in used] == []


def test_fixed_batch_graph_rejects_other_sizes():
    model = graph(batch=4)
    obs, noise = inputs(4)
    assert run(model, obs, noise).shape == (4, SPEC.act_dim)
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        run(model, *inputs(2))


def test_optimized_graph_spends_eight_kernels_per_velocity_evaluation(tmp_path):
    """After onnxruntime's own optimizations: per evaluation 3 Gemm (action part of layer 1,
    hidden layer, output + state update), 2 LayerNorm, 2 ELU and 1 Add (the observation's share)."""
    import collections

    import onnx

    evaluations = 2 * 6  # midpoint, 6 steps
    dump = tmp_path / "ort.onnx"
    make_session(graph(steps=6).SerializeToString(), providers=["CPUExecutionProvider"], optimized_model_path=str(dump))
    ops = collections.Counter(n.op_type for n in onnx.load(dump).graph.node)
    per_call = {"Gemm": 1, "Add": 2, "Clip": 1, "Tanh": 1, "Mul": 1}  # obs share of layer 1; a0; squash, rescale
    per_evaluation = {"Gemm": 3, "LayerNormalization": 2, "Elu": 2, "Add": 1}
    expected = {op: per_call.get(op, 0) + evaluations * per_evaluation.get(op, 0) for op in per_call | per_evaluation}
    assert dict(ops) == expected


@pytest.mark.parametrize("optimize", [True, False])
def test_unit_bounds_graph_ends_in_tanh_and_matches_torch(optimize):
    """Bounds [-1, 1] on every action (dm_control's): tanh is the action, no rescale nodes after it."""
    from dataclasses import replace

    spec = replace(SPEC, action_low=(-1.0,) * SPEC.act_dim, action_high=(1.0,) * SPEC.act_dim)
    actor = actor_tensors(spec)
    model = build_policy_graph(
        VelocityWeights.from_actor(actor, spec), spec, steps=3, solver="midpoint", optimize=optimize
    )
    last = model.graph.node[-1]
    assert (last.op_type, list(last.output)) == ("Tanh", ["action"])
    assert not {"action.scale", "action.bias"} & {i.name for i in model.graph.initializer}
    obs, noise = inputs(5, obs_scale=3.0, noise_scale=2.0)
    with torch.no_grad():
        expected = reference_actor(actor, spec)(torch.from_numpy(obs), torch.from_numpy(noise), 3, "midpoint").numpy()
    np.testing.assert_allclose(run(model, obs, noise), expected, atol=1e-5, rtol=1e-4)
