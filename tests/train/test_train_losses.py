"""Each FlowRL loss term against a hand computation on tiny tensors."""

import math

import pytest
import torch

from flowrl_deploy.train.losses import (
    actor_loss,
    buffer_q_loss,
    critic_td_loss,
    expectile_value_loss,
    flow_weights,
    td_target,
    weighted_flow_matching_loss,
)

REWARD = torch.tensor([1.0, 0.5])
MASK = torch.tensor([1.0, 0.0])  # the second transition ended in a true termination


def test_td_target_masks_only_the_bootstrap():
    y = td_target(REWARD, MASK, torch.tensor([10.0, 10.0]), gamma=0.9)
    assert y.tolist() == pytest.approx([1.0 + 0.9 * 10.0, 0.5])


def test_critic_td_loss_sums_the_twin_mse_toward_the_min_target_q():
    q = torch.tensor([[10.0, 1.0], [9.0, 0.0]])  # [2 heads, B=2]
    next_min_q = torch.tensor([10.0, 4.0])
    # y = [1 + 0.9·10, 0.5 + 0] = [10, 0.5]
    head1 = ((10 - 10) ** 2 + (1 - 0.5) ** 2) / 2
    head2 = ((9 - 10) ** 2 + (0 - 0.5) ** 2) / 2
    assert critic_td_loss(q, REWARD, MASK, next_min_q, 0.9).item() == pytest.approx(head1 + head2)


def test_buffer_q_loss_bootstraps_from_v_and_stops_its_gradient():
    q = torch.tensor([[2.0, 2.0], [2.0, 2.0]], requires_grad=True)
    next_v = torch.tensor([2.0, 3.0], requires_grad=True)
    loss = buffer_q_loss(q, REWARD, MASK, next_v, 0.5)  # y = [1 + 0.5·2, 0.5] = [2, 0.5]
    assert loss.item() == pytest.approx(2 * (0 + 1.5**2) / 2)
    loss.backward()
    assert next_v.grad is None


def test_expectile_value_loss_weights_under_and_over_estimates_asymmetrically():
    v = torch.tensor([0.0, 0.0])
    q = torch.tensor([2.0, -1.0])  # u = q − v: +2 (V too low, weight τ), −1 (V too high, weight 1 − τ)
    expected = (0.9 * 4 + 0.1 * 1) / 2
    assert expectile_value_loss(v, q, 0.9).item() == pytest.approx(expected)


def test_flow_weights_follow_the_reference_formula():
    q_beta = torch.tensor([3.0, 1.0, 0.0, 20.0])
    q_pi = torch.tensor([1.0, 2.0, 0.0, 0.0])
    positive = [2.0, 0.0, 0.0, 20.0]
    mean = sum(positive) / 4
    expected = [min(max(0.1 * math.exp(p - mean), 1e-3), 1.0) for p in positive]
    assert flow_weights(q_beta, q_pi, lam=0.1).tolist() == pytest.approx(expected)
    assert expected[-1] == 1.0 and expected[1] == 1e-3 and 1e-3 < expected[0] < 1.0  # both clamps bind


def test_flow_weights_carry_no_gradient():
    q_beta = torch.tensor([1.0, 2.0], requires_grad=True)
    assert not flow_weights(q_beta, torch.zeros(2), 0.1).requires_grad


def _linear_velocity(obs, a_t, t):
    """v = 2·a_t + t (a known function, so the loss can be computed by hand)."""
    return 2 * a_t + t


def _fm_case():
    obs = torch.zeros(2, 1)
    action = torch.tensor([[1.0], [-1.0]])
    a0 = torch.tensor([[0.0], [0.5]])
    t = torch.tensor([[0.5], [0.0]])
    weights = torch.tensor([1.0, 0.2])
    # a_t = t·a + (1 − t)·a0 = [0.5, 0.5]; v = 2·a_t + t = [1.5, 1.0]; target a − a0 = [1, −1.5]
    errors = [(1.5 - 1.0) ** 2, (1.0 + 1.5) ** 2]
    return (obs, action, a0, t, weights), errors


def test_weighted_flow_matching_batch_form_scales_the_batch_mean_loss():
    args, errors = _fm_case()
    expected = (1.0 + 0.2) / 2 * (sum(errors) / 2)
    assert weighted_flow_matching_loss(_linear_velocity, *args, weighting="batch").item() == pytest.approx(expected)


def test_weighted_flow_matching_sample_form_weights_each_sample():
    args, errors = _fm_case()
    expected = (1.0 * errors[0] + 0.2 * errors[1]) / 2
    assert weighted_flow_matching_loss(_linear_velocity, *args, weighting="sample").item() == pytest.approx(expected)


def test_weighted_flow_matching_rejects_an_unknown_weighting():
    args, _ = _fm_case()
    with pytest.raises(ValueError, match="batch"):
        weighted_flow_matching_loss(_linear_velocity, *args, weighting="per-token")


def test_actor_loss_maximises_q_plus_flow_matching():
    assert actor_loss(torch.tensor([1.0, 3.0]), torch.tensor(0.25)).item() == pytest.approx(-2.0 + 0.25)
