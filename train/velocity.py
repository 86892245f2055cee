"""The velocity field v_θ(s, a_t, t) of the flow policy."""

from __future__ import annotations

import torch
from torch import nn


class VelocityField(nn.Module):
    """MLP on concat[s, a_t, t]: (Linear → LayerNorm → ELU) × 2 → Linear, as in FlowRL's reference code,
    with its initialisation (Xavier-uniform weights, zero biases).

    The first layer's input columns are ordered [obs | action | t]; the exporter relies on that
    order to split the observation's share of the first layer out of the ODE loop.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 512) -> None:
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden = obs_dim, act_dim, hidden
        self.net = nn.Sequential(
            nn.Linear(obs_dim + act_dim + 1, hidden),
            nn.LayerNorm(hidden),
            nn.ELU(),
            nn.Linear(hidden, hidden),
            nn.LayerNorm(hidden),
            nn.ELU(),
            nn.Linear(hidden, act_dim),
        )
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, obs: torch.Tensor, a_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Velocity at (obs [B, obs_dim], a_t [B, act_dim], t [B, 1])."""
        return self.net(torch.cat([obs, a_t, t.to(a_t.dtype)], dim=-1))
