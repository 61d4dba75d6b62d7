"""The ILM head: one joint distribution over (slot, token) insertions and a stop action.

Layout of one pass: ``[prefix | canvas | padding]`` under full attention, where the prefix is the
source block (or a plain sequence's first token) and the canvas the tokens inserted so far. Slot k
of the canvas (the gap before canvas token k; slot n is the end) is read from the hidden state of
layout position ``P - 1 + k``: the last prefix token stands for the first slot, each canvas token
for the slot after it. The stop logit is read from the last prefix position. All slot-token
logits and the stop logit share one softmax (:func:`joint_log_probs`); slots past a row's canvas
and the end-of-sequence id (which the stop action replaces) get probability 0.
"""

from __future__ import annotations

import torch
from torch import nn

from genloom.core.errors import ConfigError
from genloom.core.model import Head
from genloom.core.pattern import FULL


class IlmHead(Head):
    def __init__(self, vocab_size: int, d_model: int, eos_id: int | None, tie_weights: bool = True, init_std: float = 0.02):
        super().__init__()
        self.vocab_size, self.eos_id = vocab_size, eos_id
        self.embed_tokens = nn.Embedding(vocab_size, d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.stop_head = nn.Linear(d_model, 1)
        nn.init.normal_(self.embed_tokens.weight, std=init_std)
        nn.init.normal_(self.stop_head.weight, std=init_std)
        nn.init.zeros_(self.stop_head.bias)
        if tie_weights:
            self.lm_head.weight = self.embed_tokens.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=init_std)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(ids)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(h)


def ilm_head(model) -> IlmHead:
    if not isinstance(model.head, IlmHead):
        raise ConfigError(f"ilm needs the 'ilm' head (insertion and stop logits), got {type(model.head).__name__}", path="head")
    return model.head


def layout(prefix: torch.Tensor, canvases: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, P + n_max), valid) for a (B, P) prefix and one canvas per row (right-padded)."""
    B, P = prefix.shape
    n = max((len(c) for c in canvases), default=0)
    ids = torch.full((B, P + n), pad_id, dtype=torch.long, device=prefix.device)
    ids[:, :P] = prefix
    valid = torch.zeros(B, P + n, dtype=torch.bool, device=prefix.device)
    valid[:, :P] = True
    for b, c in enumerate(canvases):
        if c:
            ids[b, P : P + len(c)] = torch.tensor(c, device=prefix.device)
            valid[b, P : P + len(c)] = True
    return ids, valid


def joint_log_probs(model, prefix: torch.Tensor, canvases: list[list[int]], pad_id: int) -> torch.Tensor:
    """(B, G * V + 1) log-probabilities of every (slot, token) insertion, flattened slot-major, then stop; G = n_max + 1."""
    from genloom.core import kernels

    head = ilm_head(model)
    ids, valid = layout(prefix, canvases, pad_id)
    with kernels.scope(getattr(model.ctx, "kernels", None)):
        h = model.backbone(head.embed(ids), pattern=FULL, valid=valid)
    P = prefix.shape[1]
    slots = h[:, P - 1 :]  # (B, G, D)
    logits = head(slots)
    logits = logits if logits.dtype == torch.float64 else logits.float()
    lengths = torch.tensor([len(c) for c in canvases], device=h.device)
    open_slot = torch.arange(slots.shape[1], device=h.device)[None] <= lengths[:, None]
    logits = logits.masked_fill(~open_slot[:, :, None], float("-inf"))
    if head.eos_id is not None:
        logits[..., head.eos_id] = float("-inf")
    stop = head.stop_head(h[:, P - 1]).to(logits.dtype)
    return torch.cat([logits.flatten(1), stop], 1).log_softmax(-1)


def build(config, ctx):
    return IlmHead(ctx.vocab_size, ctx.d_model, ctx.get("eos_id"), config.tie_weights, config.init_std)
