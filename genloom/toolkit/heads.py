"""Token heads: the embedding table in, logits over the vocabulary out, optionally tied.

Many heads are a token embedding plus an output projection over the vocabulary, with one or two
extra read-outs of their own (a stop logit, an order logit, a marginal). :class:`TokenHead` is
that common part, so a plugin's head subclasses it and adds only what its paper adds. Parameter
names (``embed_tokens``, ``lm_head``) are the baseline LM head's, so checkpoints and weight
comparisons read the same everywhere.
"""

from __future__ import annotations

import torch
from torch import nn

from genloom.core.model import Head


class TokenHead(Head):
    """``embed(ids)`` through ``embed_tokens``; ``forward(h)`` through ``lm_head`` (tied to the
    embedding when ``tie_weights``); both initialised N(0, ``init_std``)."""

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


def scalar_readout(d_model: int, init_std: float = 0.02) -> nn.Linear:
    """A ``Linear(d_model, 1)`` read-out with N(0, ``init_std``) weights and a zero bias (a stop,
    order or no-insertion logit beside the token logits)."""
    layer = nn.Linear(d_model, 1)
    nn.init.normal_(layer.weight, std=init_std)
    nn.init.zeros_(layer.bias)
    return layer
