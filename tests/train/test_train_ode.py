"""The fixed-step solvers against velocity fields with known flows, the sampler's bounds, and the
actor rebuilt from saved weights."""

import dataclasses
import math
import re

import pytest
import torch

from flowrl_deploy.errors import CheckpointError
from flowrl_deploy.export.verify import reference_actor
from flowrl_deploy.spec import PolicySpec
from flowrl_deploy.train.actor import FlowActor
from flowrl_deploy.train.ode import integrate

OBS = torch.zeros(3, 2)
A0 = torch.tensor([[1.0], [-0.5], [2.0]])


@pytest.mark.parametrize("solver", ["euler", "midpoint"])
@pytest.mark.parametrize("num_steps", [1, 3, 10])
def test_a_constant_field_is_integrated_exactly(solver, num_steps):
    c = torch.tensor([[0.7]])
    a1 = integrate(lambda obs, a, t: c.expand_as(a), OBS, A0, num_steps, solver)
    torch.testing.assert_close(a1, A0 + 0.7)


@pytest.mark.parametrize("num_steps", [1, 4, 16])
def test_a_field_linear_in_time_is_exact_for_midpoint(num_steps):
    # da/dt = t  ⇒  a(1) = a0 + 1/2; the midpoint rule integrates linear-in-t fields exactly
    a1 = integrate(lambda obs, a, t: t.expand_as(a), OBS, A0, num_steps, "midpoint")
    torch.testing.assert_close(a1, A0 + 0.5)


@pytest.mark.parametrize("num_steps", [1, 4, 16])
def test_euler_and_midpoint_match_their_one_step_growth_factors_on_v_equals_a(num_steps):
    # da/dt = a  ⇒  exact a(1) = e·a0; Euler multiplies by (1 + h) per step, midpoint by (1 + h + h²/2)
    h = 1.0 / num_steps
    euler = integrate(lambda obs, a, t: a, OBS, A0, num_steps, "euler")
    midpoint = integrate(lambda obs, a, t: a, OBS, A0, num_steps, "midpoint")
    torch.testing.assert_close(euler, A0 * (1 + h) ** num_steps)
    torch.testing.assert_close(midpoint, A0 * (1 + h + h * h / 2) ** num_steps)
    assert (midpoint / A0 - math.e).abs().max() < (euler / A0 - math.e).abs().max()


def test_midpoint_converges_to_the_exact_flow():
    errors = [(integrate(lambda obs, a, t: a, OBS, A0, n, "midpoint") / A0 - math.e).abs().max().item() for n in (4, 8)]
    assert errors[1] < errors[0] / 3.5  # second order: halving h divides the error by ~4


def test_time_runs_from_zero_to_one():
    seen = []
    integrate(lambda obs, a, t: seen.append(t[0, 0].item()) or torch.zeros_like(a), OBS, A0, 2, "euler")
    assert seen == [0.0, 0.5]


@pytest.mark.parametrize("num_steps", [1, 2, 5, 20])
@pytest.mark.parametrize("solver", ["euler", "midpoint"])
def test_sampled_actions_stay_inside_the_action_bounds(num_steps, solver):
    torch.manual_seed(0)
    spec = PolicySpec(obs_dim=4, act_dim=3, action_low=(-2.0, 0.0, -0.1), action_high=(3.0, 1.0, 0.1), hidden=16)
    actor = FlowActor(spec)
    with torch.no_grad():
        for p in actor.parameters():
            p.mul_(50.0)  # a wild field pushes pre-tanh values far out; tanh must still bound them
        actions = actor(torch.randn(256, 4) * 10, num_steps=num_steps, solver=solver)
    low, high = torch.tensor(spec.action_low), torch.tensor(spec.action_high)
    assert ((actions >= low) & (actions <= high)).all()


@pytest.mark.parametrize(
    ("num_steps", "solver", "message"),
    [(0, "euler", "num_steps must be >= 1, got 0"), (2, "rk4", "unknown solver 'rk4'; choose 'midpoint' or 'euler'")],
)
def test_an_impossible_step_count_or_solver_is_refused_by_name(num_steps, solver, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        integrate(lambda obs, a, t: a, OBS, A0, num_steps, solver)


SMALL = PolicySpec(obs_dim=2, act_dim=1, action_low=(-1.0,), action_high=(1.0,), hidden=8)


@pytest.mark.parametrize(
    ("num_steps", "solver", "message"),
    [(0, None, "num_steps must be >= 1, got 0"), (None, "", "unknown solver ''; choose 'midpoint' or 'euler'")],
)
def test_the_actor_refuses_zero_steps_or_an_empty_solver_rather_than_sampling_with_its_specs(
    num_steps, solver, message
):
    """load_actor's FlowActor is public: actor(obs, num_steps=0) sampled at the spec's N without a word."""
    with pytest.raises(ValueError, match=re.escape(message)):
        FlowActor(SMALL)(torch.zeros(1, 2), num_steps=num_steps, solver=solver)


@pytest.mark.parametrize(
    "rebuild", [FlowActor.from_numpy, lambda spec, weights: reference_actor(weights, spec)], ids=["actor", "verify"]
)
def test_an_actor_rebuilt_from_numpy_weights_holds_them_or_names_the_mismatch(rebuild):
    """The training, evaluation and export-verification actors are all built by FlowActor.from_numpy:
    the weights come back exactly, and weights of another width are a CheckpointError, not torch's RuntimeError."""
    torch.manual_seed(0)
    saved = {k: v.numpy().copy() for k, v in FlowActor(SMALL).state_dict().items()}
    rebuilt = rebuild(SMALL, saved)
    for key, value in rebuilt.state_dict().items():
        assert value.dtype == torch.float32 and torch.equal(value, torch.from_numpy(saved[key])), key
    wider = "the actor weights do not match its spec: velocity.net.0.weight has shape (8, 4), the spec implies (16, 4)"
    with pytest.raises(CheckpointError, match=re.escape(wider) + r" \(and 8 more\)$"):
        rebuild(dataclasses.replace(SMALL, hidden=16), saved)
    with pytest.raises(CheckpointError, match=r"do not match its spec: missing \['velocity.net.6.bias'\]$"):
        rebuild(SMALL, {k: v for k, v in saved.items() if k != "velocity.net.6.bias"})
