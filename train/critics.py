"""Critics of FlowRL: the twin Q heads (for Q^π and Q^β) and the state value V.

Each is an ensemble of MLPs laid out as in the reference code: an input Linear, then a block
LayerNorm → Linear → LayerNorm → GELU → Linear → LayerNorm → GELU → Linear → LayerNorm, then a
Linear to one value; Xavier-uniform weights and zero biases. The members of an ensemble are
evaluated together: their weights are stacked along a leading member axis and every layer is one
batched matmul, so the twin heads cost one kernel per layer instead of two (the main CPU overhead
at batch 256).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class EnsembleLinear(nn.Module):
    """``members`` independent linear layers applied as one batched matmul.

    Input [B, in] (shared by all members) or [members, B, in]; output [members, B, out].
    Xavier-uniform weights (±√(6 / (in + out))) and zero biases, as the reference code initialises.
    """

    def __init__(self, members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = math.sqrt(6.0 / (in_features + out_features))
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(members, 1, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.expand(self.weight.shape[0], *x.shape)
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the last axis with a separate affine (gain, shift) per member."""

    def __init__(self, members: int, features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, 1, features))
        self.bias = nn.Parameter(torch.zeros(members, 1, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias, F.layer_norm(x, x.shape[-1:]), self.weight)


class EnsembleMLP(nn.Module):
    """``members`` MLPs in → hidden (×4 Linear, with LayerNorm and GELU) → 1; output [members, B]."""

    def __init__(self, members: int, in_features: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            EnsembleLinear(members, in_features, hidden),  # the reference's input layer
            EnsembleLayerNorm(members, hidden),  # its value block, from here
            EnsembleLinear(members, hidden, hidden),
            EnsembleLayerNorm(members, hidden),
            nn.GELU(),
            EnsembleLinear(members, hidden, hidden),
            EnsembleLayerNorm(members, hidden),
            nn.GELU(),
            EnsembleLinear(members, hidden, hidden),
            EnsembleLayerNorm(members, hidden),  # to here
            EnsembleLinear(members, hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1).float()  # float32 values even under bf16 autocast


class TwinQ(EnsembleMLP):
    """Two Q heads Q_1, Q_2(s, a), evaluated together; ``forward`` returns [2, B]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 512) -> None:
        super().__init__(2, obs_dim + act_dim, hidden)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.cat([obs, action], dim=-1))

    def min_q(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """min(Q_1, Q_2)(s, a), shape [B] — the clipped double-Q estimate."""
        return self(obs, action).min(dim=0).values


class ValueNet(EnsembleMLP):
    """The state value V(s) of the behavior-optimal critic; ``forward`` returns [B]."""

    def __init__(self, obs_dim: int, hidden: int = 512) -> None:
        super().__init__(1, obs_dim, hidden)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return super().forward(obs)[0]
