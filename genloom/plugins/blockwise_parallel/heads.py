"""The blockwise proposal head: k heads over one shared hidden state (Stern et al., 2018, Sec. 5.1).

Head 1 is the base head (the model's own next-token distribution, ``p_1``). Head i (i = 2..k)
predicts the token i positions ahead from the same hidden state: a residual feed-forward layer
of its own, ``h_i = h + W2 act(W1 norm(h))``, then the *shared* output projection of the base head.
"""

from __future__ import annotations

import torch
from torch import nn

from genloom.core.model import Head


class ResidualFeedForward(nn.Module):
    """``h + W2 gelu(W1 norm(h))``; W2 starts at zero so a new head starts as a copy of head 1."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.up = nn.Linear(d_model, hidden)
        self.down = nn.Linear(hidden, d_model)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.down(nn.functional.gelu(self.up(self.norm(h))))


class BlockwiseHead(Head):
    """A base head (embedding, projection, distribution) plus ``block_size - 1`` proposal heads.

    ``forward`` gives the base head's next-token logits, so every other objective and decoder
    sees an ordinary head; :meth:`proposal_logits` gives all k heads' logits (..., k, V).
    """

    def __init__(self, base: Head, *, block_size: int, d_model: int, hidden: int):
        super().__init__()
        self.base = base
        self.block_size = block_size
        self.proposal_layers = nn.ModuleList(ResidualFeedForward(d_model, hidden) for _ in range(block_size - 1))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.base.embed(ids)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.base(h)

    def loss(self, outputs, targets, mask=None):
        return self.base.loss(outputs, targets, mask)

    def sample(self, logits, generator=None):
        return self.base.sample(logits, generator)

    def proposal_logits(self, h: torch.Tensor, heads: int | None = None) -> torch.Tensor:
        """Logits of the first ``heads`` (default all k) heads at hidden states ``h`` (..., D): (..., heads, V)."""
        n = self.block_size if heads is None else heads
        outs = [self.base(h)] + [self.base(layer(h)) for layer in self.proposal_layers[: n - 1]]
        return torch.stack(outs, dim=-2)


def build_head(config, ctx) -> BlockwiseHead:
    node = {"name": config.base} if isinstance(config.base, str) else dict(config.base)
    base = ctx.build("head", node, path="head.base")
    d_model = int(ctx.d_model)
    ctx.set("blockwise_block_size", config.block_size)
    return BlockwiseHead(base, block_size=config.block_size, d_model=d_model, hidden=config.hidden or 4 * d_model)
