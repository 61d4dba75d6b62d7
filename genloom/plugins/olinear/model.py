"""OLinear's mixer: NormLin across variate tokens and a feed-forward network per token.

``NormLin(h)[b, i] = sum_j W_norm[i, j] h[b, j]`` with ``W_norm`` a row-normalised version of a
learned V x V matrix (non-negative rows summing to 1), followed by a linear map of the width.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from genloom.core.model import Backbone
from genloom.core.pattern import FULL, AttentionPattern
from genloom.plugins.olinear import OLinearConfig


class NormLin(nn.Module):
    """Linear mixing of the V variate tokens with a row-normalised weight matrix, then Linear(d, d)."""

    def __init__(self, num_variates: int, d_model: int, normalization: str = "softplus"):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_variates, num_variates))
        self.normalization = normalization
        self.projection = nn.Linear(d_model, d_model)

    def normalized_weight(self) -> torch.Tensor:
        if self.normalization == "softmax":
            return torch.softmax(self.weight, dim=-1)
        positive = F.softplus(self.weight)
        return positive / positive.sum(dim=-1, keepdim=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.shape[1] != self.weight.shape[0]:
            raise ValueError(f"NormLin mixes {self.weight.shape[0]} variates, got {h.shape[1]} tokens")
        return self.projection(torch.einsum("ij,bjd->bid", self.normalized_weight().to(h.dtype), h))


class OLinearBlock(nn.Module):
    def __init__(self, config: OLinearConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(config.d_model), nn.LayerNorm(config.d_model)
        self.normlin = NormLin(config.num_variates, config.d_model, config.normalization)
        self.ffn = nn.Sequential(nn.Linear(config.d_model, config.ffn_hidden), nn.GELU(), nn.Linear(config.ffn_hidden, config.d_model))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, h):
        h = h + self.dropout(self.normlin(self.norm1(h)))
        return h + self.dropout(self.ffn(self.norm2(h)))


class OLinear(Backbone):
    """Variate tokens (B, V, d) -> (B, V, d): NormLin blocks, then a LayerNorm."""

    patterns = frozenset({"full"})

    def __init__(self, config: OLinearConfig):
        super().__init__()
        self.d_model = config.d_model
        self.blocks = nn.ModuleList(OLinearBlock(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = FULL, state=None, valid=None) -> torch.Tensor:
        if state is not None:
            raise ValueError("olinear mixes all variate tokens at once; it has no incremental state")
        if pattern.kind != "full":
            raise ValueError(f"olinear mixes across variates with the 'full' pattern, got '{pattern.kind}'")
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        raise NotImplementedError("olinear mixes all variate tokens at once; it has no incremental state")


def build(config: OLinearConfig, ctx) -> OLinear:
    if config.num_variates is None:
        config.bind(ctx)
    ctx.set("d_model", config.d_model)
    return OLinear(config)
