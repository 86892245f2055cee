"""The fused twin critics compute exactly what two separate MLPs would."""

import torch
import torch.nn.functional as F

from flowrl_deploy.train.critics import EnsembleLayerNorm, EnsembleLinear, TwinQ, ValueNet


def separate_mlp(critic, member: int, x: torch.Tensor) -> torch.Tensor:
    """Member ``member`` of an ensemble, evaluated on its own with plain torch ops, in the reference
    code's order: Linear, then LN → Linear → LN → GELU → Linear → LN → GELU → Linear → LN, then Linear."""
    linears = [m for m in critic.net if isinstance(m, EnsembleLinear)]
    norms = [m for m in critic.net if isinstance(m, EnsembleLayerNorm)]
    assert len(linears) == 5 and len(norms) == 4

    def linear(i: int, h: torch.Tensor) -> torch.Tensor:
        return h @ linears[i].weight[member] + linears[i].bias[member, 0]

    def norm(i: int, h: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(h, h.shape[-1:]) * norms[i].weight[member, 0] + norms[i].bias[member, 0]

    h = norm(0, linear(0, x))
    h = F.gelu(norm(1, linear(1, h)))
    h = F.gelu(norm(2, linear(2, h)))
    h = norm(3, linear(3, h))
    return linear(4, h).squeeze(-1)


def test_twin_heads_equal_two_independent_mlps():
    torch.manual_seed(0)
    critic = TwinQ(obs_dim=3, act_dim=2, hidden=8)
    with torch.no_grad():  # give the LayerNorm affines distinct values per head
        for p in critic.parameters():
            p.add_(0.1 * torch.randn_like(p))
    obs, action = torch.randn(5, 3), torch.randn(5, 2)
    q = critic(obs, action)
    assert q.shape == (2, 5)
    x = torch.cat([obs, action], -1)
    torch.testing.assert_close(q[0], separate_mlp(critic, 0, x))
    torch.testing.assert_close(q[1], separate_mlp(critic, 1, x))
    assert not torch.allclose(q[0], q[1])  # the heads are independent
    torch.testing.assert_close(critic.min_q(obs, action), torch.minimum(q[0], q[1]))


def test_heads_get_gradients_only_from_their_own_loss():
    critic = TwinQ(obs_dim=3, act_dim=1, hidden=8)
    critic(torch.randn(4, 3), torch.randn(4, 1))[0].sum().backward()
    first_layer = critic.net[0].weight.grad
    assert first_layer[0].abs().sum() > 0 and first_layer[1].abs().sum() == 0


def test_initialisation_is_xavier_uniform_with_zero_biases():
    critic = TwinQ(obs_dim=30, act_dim=2, hidden=64)
    first = critic.net[0]
    bound = (6 / (32 + 64)) ** 0.5
    assert first.weight.abs().max() <= bound and first.weight.abs().max() > 0.9 * bound
    assert all(m.bias.abs().sum() == 0 for m in critic.net if isinstance(m, EnsembleLinear))


def test_value_net_shape():
    assert ValueNet(obs_dim=3, hidden=8)(torch.randn(6, 3)).shape == (6,)
