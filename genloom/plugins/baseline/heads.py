"""The LM head: token embedding in, logits over the vocabulary out."""

from __future__ import annotations

import torch
from torch import nn

from genloom.core.model import Head


class LmHead(Head):
    def __init__(self, vocab_size: int, d_model: int, tie_weights: bool = True, init_std: float = 0.02):
        super().__init__()
        self.vocab_size = vocab_size
        self.embed_tokens = nn.Embedding(vocab_size, d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        nn.init.normal_(self.embed_tokens.weight, std=init_std)
        if tie_weights:
            self.lm_head.weight = self.embed_tokens.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=init_std)
        self.tied = tie_weights

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(ids)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(h)


def build_lm(config, ctx):
    return LmHead(ctx.vocab_size, ctx.d_model, config.tie_weights, config.init_std)
