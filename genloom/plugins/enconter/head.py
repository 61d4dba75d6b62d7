"""The ENCONTER head: a token-or-nothing distribution in every slot, from one pass.

Layout: ``[prefix | canvas | padding]`` under full attention (validity mask); slot k of the canvas
is read from the hidden state at layout ``P - 1 + k``, as in every insertion decoder here. Each
slot has its own softmax over the vocabulary plus a last class, *no insertion*; the
end-of-sequence id is never inserted, slots past a row's canvas and *locked* slots (inside an
entity span) can only choose *no insertion* (:func:`slot_log_probs`).
"""

from __future__ import annotations

import torch
from torch import nn

from genloom.core.errors import ConfigError
from genloom.core.model import Head
from genloom.core.pattern import FULL


class EnconterHead(Head):
    def __init__(self, vocab_size: int, d_model: int, eos_id, tie_weights: bool = True, init_std: float = 0.02):
        super().__init__()
        self.vocab_size, self.eos_id = vocab_size, eos_id
        self.embed_tokens = nn.Embedding(vocab_size, d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.no_insertion = nn.Linear(d_model, 1)
        nn.init.normal_(self.embed_tokens.weight, std=init_std)
        nn.init.normal_(self.no_insertion.weight, std=init_std)
        nn.init.zeros_(self.no_insertion.bias)
        if tie_weights:
            self.lm_head.weight = self.embed_tokens.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=init_std)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(ids)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., V + 1) token logits and the no-insertion logit."""
        return torch.cat([self.lm_head(h), self.no_insertion(h)], -1)


def enconter_head(model) -> EnconterHead:
    if not isinstance(model.head, EnconterHead):
        raise ConfigError(f"enconter needs the 'enconter' head (per-slot token or no-insertion), got {type(model.head).__name__}", path="head")
    return model.head


def slot_log_probs(model, prefix: torch.Tensor, canvases: list[list[int]], locked: list[set[int]], pad_id: int) -> torch.Tensor:
    """(B, G, V + 1) per-slot log-probabilities (last class: no insertion), G = longest canvas + 1."""
    from genloom.core import kernels

    head = enconter_head(model)
    B, P = prefix.shape
    n = max((len(c) for c in canvases), default=0)
    ids = torch.full((B, P + n), pad_id, dtype=torch.long, device=prefix.device)
    ids[:, :P] = prefix
    valid = torch.zeros(B, P + n, dtype=torch.bool, device=prefix.device)
    valid[:, :P] = True
    closed = torch.zeros(B, n + 1, dtype=torch.bool, device=prefix.device)
    for b, c in enumerate(canvases):
        if c:
            ids[b, P : P + len(c)] = torch.tensor(c, device=prefix.device)
            valid[b, P : P + len(c)] = True
        closed[b, len(c) + 1 :] = True
        for s in locked[b]:
            closed[b, s] = True
    with kernels.scope(getattr(model.ctx, "kernels", None)):
        h = model.backbone(head.embed(ids), pattern=FULL, valid=valid)
    logits = head(h[:, P - 1 :])
    logits = logits if logits.dtype == torch.float64 else logits.float()
    if head.eos_id is not None:
        logits[..., head.eos_id] = float("-inf")
    logits[..., :-1] = logits[..., :-1].masked_fill(closed[:, :, None], float("-inf"))
    return logits.log_softmax(-1)


def build(config, ctx):
    return EnconterHead(ctx.vocab_size, ctx.d_model, ctx.get("eos_id"), config.tie_weights, config.init_std)
