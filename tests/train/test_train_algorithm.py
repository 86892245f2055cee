"""The FlowRL update: which networks move when, target updates, and the checkpoint state round trip."""

import dataclasses

import numpy as np
import pytest
import torch
from tiny_training import random_batch

from flowrl_deploy.errors import CheckpointError
from flowrl_deploy.spec import PolicySpec
from flowrl_deploy.train import algorithm
from flowrl_deploy.train.algorithm import FlowRL, soft_update, training_bytes
from flowrl_deploy.train.config import TrainConfig
from flowrl_deploy.train.replay import Batch

SPEC = PolicySpec(obs_dim=3, act_dim=2, action_low=(-1.0, -2.0), action_high=(1.0, 2.0), hidden=16)


def make_agent(seed: int = 0, spec: PolicySpec = SPEC, **overrides) -> FlowRL:
    torch.manual_seed(seed)
    return FlowRL(spec, TrainConfig(hidden=16, batch_size=8, **overrides))


def batch(seed: int = 0) -> Batch:
    return random_batch(seed, mask=np.array([1, 1, 1, 0, 1, 1, 1, 1], np.float32))  # the fourth is terminal


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def moved(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_soft_update_moves_targets_rate_of_the_way_to_the_online_weights():
    target, online = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expected = [
        0.95 * o.detach() + 0.05 * t.detach() for t, o in zip(target.parameters(), online.parameters(), strict=True)
    ]
    soft_update(target, online, 0.95)
    for got, want in zip(target.parameters(), expected, strict=True):
        torch.testing.assert_close(got, want)


def test_critics_update_every_step_actor_and_targets_every_policy_delay():
    agent = make_agent(policy_delay=2)
    modules = {name: getattr(agent, name) for name in FlowRL.NETWORKS}
    for update in range(3):
        before = {name: snapshot(m) for name, m in modules.items()}
        metrics = agent.update(batch(update))
        delayed = update % 2 == 0
        assert moved(before["q_pi"], agent.q_pi) and moved(before["q_beta"], agent.q_beta)
        assert moved(before["value"], agent.value)
        for name in ("actor", "q_pi_target", "q_beta_target"):
            assert moved(before[name], modules[name]) == delayed, (update, name)
        assert ("actor_loss" in metrics) == delayed
        assert all(v.dim() == 0 and torch.isfinite(v) for v in metrics.values())
    assert agent.updates == 3


def test_q_beta_starts_as_a_copy_of_q_pi_and_each_target_as_a_copy_of_its_critic():
    """As in the reference code (``hard_update(critic_buffer, critic)``): Q^β starts from Q^π's
    weights, so the first advantages Q^β(s, a) − Q^π(s, π(s)) compare one network at two actions,
    not two random draws. Each critic and target keeps its own tensors, and Q^β then trains apart."""
    agent = make_agent()
    critics = ("q_pi", "q_beta", "q_pi_target", "q_beta_target")
    params = {name: list(getattr(agent, name).parameters()) for name in critics}
    for name in critics[1:]:
        for got, want in zip(params[name], params["q_pi"], strict=True):
            assert torch.equal(got, want), name
    pointers = [p.data_ptr() for name in critics for p in params[name]]
    assert len(set(pointers)) == len(pointers)  # no tensor shared between any two of them
    assert not any(p.requires_grad for name in critics[2:] for p in params[name])
    assert all(p.requires_grad for name in critics[:2] for p in params[name])
    obs, action = (torch.as_tensor(x) for x in batch(0)[:2])
    torch.testing.assert_close(agent.q_beta(obs, action), agent.q_pi(obs, action), rtol=0, atol=0)

    before_pi = snapshot(agent.q_pi)
    agent.update(batch(0))
    assert moved(before_pi, agent.q_pi)
    assert moved(snapshot(agent.q_pi), agent.q_beta)  # toward r + γ·V(s'), not Q^π's target


@pytest.mark.parametrize("target, online", [("q_pi_target", "q_pi"), ("q_beta_target", "q_beta")])
def test_target_critics_move_tau_of_the_way_to_the_online_ones_at_each_target_update(target, online):
    """Each target moves tau = 5 % of the way to its *own* online critic (Q^π and Q^β start equal but
    train toward different targets, so after the first update the two pairs are told apart)."""
    agent = make_agent(tau=0.05)
    agent.update(batch(0))
    agent.update(batch(1))  # no target update (policy_delay 2)
    old_target = snapshot(getattr(agent, target))
    agent.update(batch(2))  # critic step, then actor and target updates
    new_online = snapshot(getattr(agent, online))
    for got, old, new in zip(getattr(agent, target).parameters(), old_target, new_online, strict=True):
        torch.testing.assert_close(got, 0.95 * old + 0.05 * new)


def test_the_critic_step_regresses_each_critic_on_its_own_target():
    """Written out from the algorithm's text, not from the loss module: Q^π toward the *target*
    Q^π at a' ~ π(s'), Q^β toward V(s'), V toward the *target* Q^β at the buffer action."""
    agent = make_agent(gamma=0.9, expectile=0.7)
    with torch.no_grad():  # targets that differ from their online critics, as after training a while
        agent.q_pi_target.net[-1].bias += 3.0
        agent.q_beta_target.net[-1].bias -= 3.0
    obs, action, reward, next_obs, mask = (torch.as_tensor(x) for x in batch(0))
    torch.manual_seed(5)
    with torch.no_grad():
        next_action = agent.actor(next_obs)
        y_pi = reward + 0.9 * mask * agent.q_pi_target(next_obs, next_action).min(dim=0).values
        y_beta = reward + 0.9 * mask * agent.value(next_obs)
        q_beta = agent.q_beta(obs, action)
        u = agent.q_beta_target(obs, action).min(dim=0).values - agent.value(obs)
        expected = {
            "q_pi_loss": ((agent.q_pi(obs, action) - y_pi) ** 2).mean(dim=1).sum(),
            "q_beta_loss": ((q_beta - y_beta) ** 2).mean(dim=1).sum(),
            "value_loss": (torch.where(u > 0, 0.7, 0.3) * u**2).mean(),
        }
    torch.manual_seed(5)
    metrics, min_q_beta = agent.critic_step(obs, action, reward, next_obs, mask)
    for name, value in expected.items():
        torch.testing.assert_close(metrics[name], value, msg=name)
    torch.testing.assert_close(min_q_beta, q_beta.min(dim=0).values)  # before Q^β's own step


@pytest.mark.parametrize("weighting", ["batch", "sample"])
def test_the_actor_step_maximises_q_pi_plus_advantage_weighted_flow_matching(weighting):
    """−min Q^π(s, π(s)) + flow matching toward the buffer action from clamped noise, weighted by
    clamp(λ·exp(A⁺ − mean A⁺), 1e-3, 1) with A = Q^β(s, a) − Q^π(s, π(s))."""
    agent = make_agent(spec=dataclasses.replace(SPEC, noise_clip=0.5), lam=0.5, cfm_weighting=weighting)
    obs, action, *_ = (torch.as_tensor(x) for x in batch(0))
    action[0] = torch.tensor([1.5, -3.0])  # outside the bounds ±1, ±2 (rounding, or a hand-filled buffer)
    min_q_beta = torch.linspace(-2.0, 6.0, 8)  # advantages of both signs
    torch.manual_seed(7)
    with torch.no_grad():
        min_q_pi = agent.q_pi(obs, agent.actor(obs)).min(dim=0).values
        positive = (min_q_beta - min_q_pi).clamp(min=0)
        weights = (0.5 * torch.exp(positive - positive.mean())).clamp(1e-3, 1.0)
        a0 = torch.randn(8, 2).clamp(-0.5, 0.5)  # the spec's noise clip
        t = torch.rand(8, 1)
        target = (action / torch.tensor([1.0, 2.0])).clamp(-1.0, 1.0)  # the buffer action in [-1, 1]
        a_t = t * target + (1 - t) * a0
        error = ((agent.actor.velocity(obs, a_t, t) - (target - a0)) ** 2).mean(dim=-1)
        flow_matching = weights.mean() * error.mean() if weighting == "batch" else (weights * error).mean()
    assert 0 < (weights < 1).sum() < 8  # the clamp binds on some samples, not all
    torch.manual_seed(7)
    metrics = agent.actor_step(obs, action, min_q_beta)
    torch.testing.assert_close(metrics["flow_weight"], weights.mean())
    torch.testing.assert_close(metrics["flow_matching_loss"], flow_matching)
    torch.testing.assert_close(metrics["actor_loss"], -min_q_pi.mean() + flow_matching)


def test_the_q_pi_gradient_reaches_the_actor_through_its_sampled_action(monkeypatch):
    """With the flow-matching term zeroed, the actor's gradient is that of −min Q^π(s, π(s)),
    backpropagated through the sampled action into the velocity field (not into Q^π's weights)."""
    monkeypatch.setattr(algorithm, "weighted_flow_matching_loss", lambda *args: torch.zeros(()))
    agent = make_agent()
    obs, action, *_ = (torch.as_tensor(x) for x in batch(0))
    q_pi = snapshot(agent.q_pi)
    torch.manual_seed(7)
    loss = -agent.q_pi(obs, agent.actor(obs)).min(dim=0).values.mean()
    expected = torch.autograd.grad(loss, list(agent.actor.parameters()))
    assert all(g.abs().sum() > 0 for g in expected)
    torch.manual_seed(7)
    agent.actor_step(obs, action, torch.zeros(8))
    for param, grad in zip(agent.actor.parameters(), expected, strict=True):
        torch.testing.assert_close(param.grad, grad)
    assert not moved(q_pi, agent.q_pi) and all(p.grad is None for p in agent.q_pi.parameters())


def test_restored_state_continues_with_identical_updates():
    agent = make_agent(seed=0)
    for i in range(3):
        agent.update(batch(i))
    actor = {k: v.numpy().copy() for k, v in agent.actor.state_dict().items()}
    tensors, state = agent.state_tensors(), agent.state_json()
    a = agent.update(batch(9))
    clone = make_agent(seed=123)
    clone.load_state(actor, tensors, state)  # also rewinds torch's RNG (shared in this process)
    assert clone.updates == 3
    b = clone.update(batch(9))
    assert {k: v.item() for k, v in a.items()} == {k: v.item() for k, v in b.items()}
    for p, q in zip(agent.actor.parameters(), clone.actor.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_state_of_another_architecture_is_a_clear_error():
    agent = make_agent()
    tensors, state = agent.state_tensors(), agent.state_json()
    other = FlowRL(dataclasses.replace(SPEC, hidden=8), TrainConfig(hidden=8))
    with pytest.raises(CheckpointError, match="the actor weights do not match its spec"):
        other.load_state({k: v.numpy() for k, v in agent.actor.state_dict().items()}, tensors, state)


def test_training_bytes_counts_the_networks_their_gradients_and_adam_moments():
    agent = make_agent()
    for i in range(2):  # Adam's moments exist after the first actor step
        agent.update(batch(i))
    params = [p for name in FlowRL.NETWORKS for p in getattr(agent, name).parameters()]
    weights = sum(p.numel() for p in params)
    grads = sum(p.grad.numel() for p in params if p.grad is not None)  # the trained networks' only
    moments = sum(
        v.numel()
        for name in FlowRL.OPTIMIZERS
        for state in getattr(agent, name).state.values()
        for key, v in state.items()
        if key != "step"
    )
    assert training_bytes(SPEC) == 4 * (weights + grads + moments)


def old_critic_layout(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The training state of a run from before the critics' LayerNorm blocks: every critic keeps its input
    and output layers, loses the block's layers and has a hidden Linear where a LayerNorm now sits."""
    critics = ("q_pi.", "q_pi_target.", "q_beta.", "q_beta_target.", "value.")
    old = {k: v for k, v in tensors.items() if not k.startswith(critics)}
    for k, v in tensors.items():
        if k.startswith(critics) and (".net.0." in k or ".net.10." in k):
            old[k] = v
        if k.startswith(critics) and ".net.2." in k:
            old[k.replace(".net.2.", ".net.4.")] = v
    return old


def test_state_of_an_older_critic_layout_is_one_line_naming_the_difference_and_what_to_do():
    agent = make_agent()
    actor = {k: v.numpy() for k, v in agent.actor.state_dict().items()}
    tensors, state = old_critic_layout(agent.state_tensors()), agent.state_json()
    state.pop("layout_version", None)  # written before the key existed
    with pytest.raises(CheckpointError) as err:
        make_agent().load_state(actor, tensors, state)
    message = str(err.value)
    assert "\n" not in message and "\t" not in message
    assert "older flowrl-deploy" in message
    assert "q_pi" in message and "net.2.weight" in message and "net.4.weight" in message
    assert "exported, evaluated and served" in message and "start a new run" in message
    assert "Error(s) in loading state_dict" not in message


def test_training_state_records_its_layout_version_and_a_newer_one_is_refused_before_any_tensor():
    agent = make_agent()
    actor = {k: v.numpy() for k, v in agent.actor.state_dict().items()}
    tensors, state = agent.state_tensors(), agent.state_json()
    assert state["layout_version"] == algorithm.TRAINING_STATE_VERSION
    state["layout_version"] = algorithm.TRAINING_STATE_VERSION + 1
    clone = make_agent(seed=5)
    before = snapshot(clone.q_pi)
    with pytest.raises(
        CheckpointError, match=r"^training state: layout_version 2 was written by a newer .*reads up to 1.*upgrade"
    ) as err:
        clone.load_state(actor, tensors, state)
    assert "exported, evaluated and served" in str(err.value)
    assert not moved(before, clone.q_pi)


@pytest.mark.parametrize("version", [0, -1, True, 1.5, "1"])
def test_a_layout_version_that_is_no_positive_integer_is_refused(version):
    agent = make_agent()
    actor = {k: v.numpy() for k, v in agent.actor.state_dict().items()}
    state = {**agent.state_json(), "layout_version": version}
    with pytest.raises(CheckpointError, match=r"^training state: layout_version must be a positive integer, got "):
        make_agent().load_state(actor, agent.state_tensors(), state)


def test_state_of_this_layout_version_with_other_critics_is_not_called_older():
    """Critics that do not fit state claiming today's layout come from another build, not an older one."""
    agent = make_agent()
    actor = {k: v.numpy() for k, v in agent.actor.state_dict().items()}
    tensors, state = old_critic_layout(agent.state_tensors()), agent.state_json()
    with pytest.raises(CheckpointError, match="written by another flowrl-deploy whose critics have another layout"):
        make_agent().load_state(actor, tensors, state)


def test_state_without_a_layout_version_is_todays_layout():
    agent = make_agent()
    for i in range(2):
        agent.update(batch(i))
    actor = {k: v.numpy().copy() for k, v in agent.actor.state_dict().items()}
    tensors, state = agent.state_tensors(), agent.state_json()
    state.pop("layout_version")
    clone = make_agent(seed=7)
    clone.load_state(actor, tensors, state)
    assert clone.updates == 2
