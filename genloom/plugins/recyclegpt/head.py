"""The recyclable module: the previous full-model hidden state and the new token -> the next token."""

from __future__ import annotations

import torch
from torch import nn

from genloom.core.model import Head


class RecyclableModule(nn.Module):
    """``h' = h + W2 gelu(W1 [norm(h); norm(e)])``: a residual feed-forward layer over the last
    hidden state ``h`` and the embedding ``e`` of the token generated from it."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.norm_h = nn.LayerNorm(d_model)
        self.norm_e = nn.LayerNorm(d_model)
        self.up = nn.Linear(2 * d_model, hidden)
        self.down = nn.Linear(hidden, d_model)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return h + self.down(nn.functional.gelu(self.up(torch.cat([self.norm_h(h), self.norm_e(e)], -1))))


class RecycleHead(Head):
    """A base head plus the recyclable module; ``forward`` is the base head's."""

    def __init__(self, base: Head, *, d_model: int, hidden: int):
        super().__init__()
        self.base = base
        self.recycler = RecyclableModule(d_model, hidden)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.base.embed(ids)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.base(h)

    def loss(self, outputs, targets, mask=None):
        return self.base.loss(outputs, targets, mask)

    def sample(self, logits, generator=None):
        return self.base.sample(logits, generator)

    def recycle_logits(self, h: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """Logits of the token after ``token``, from the hidden state ``h`` (..., D) that produced ``token`` (...)."""
        return self.base(self.recycler(h, self.base.embed(token).to(h.dtype)))


def build_head(config, ctx) -> RecycleHead:
    node = {"name": config.base} if isinstance(config.base, str) else dict(config.base)
    base = ctx.build("head", node, path="head.base")
    d_model = int(ctx.d_model)
    return RecycleHead(base, d_model=d_model, hidden=config.hidden or 4 * d_model)
