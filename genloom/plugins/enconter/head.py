"""The ENCONTER head: a token-or-nothing distribution in every slot, from one pass.

Layout: ``[prefix | canvas | padding]`` under full attention (validity mask); slot k of the canvas
is read from the hidden state at layout ``P - 1 + k``, as in every insertion decoder here. Each
slot has its own softmax over the vocabulary plus a last class, *no insertion*; the
end-of-sequence id is never inserted, slots past a row's canvas and *locked* slots (inside an
entity span) can only choose *no insertion* (:func:`slot_log_probs`).
"""

from __future__ import annotations

import torch

from genloom.core.errors import ConfigError
from genloom.toolkit.heads import TokenHead, scalar_readout
from genloom.toolkit.anyorder import slot_states


class EnconterHead(TokenHead):
    def __init__(self, vocab_size: int, d_model: int, eos_id, tie_weights: bool = True, init_std: float = 0.02):
        super().__init__(vocab_size, d_model, tie_weights, init_std)
        self.eos_id = eos_id
        self.no_insertion = scalar_readout(d_model, init_std)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., V + 1) token logits and the no-insertion logit."""
        return torch.cat([self.lm_head(h), self.no_insertion(h)], -1)


def enconter_head(model) -> EnconterHead:
    if not isinstance(model.head, EnconterHead):
        raise ConfigError(f"enconter needs the 'enconter' head (per-slot token or no-insertion), got {type(model.head).__name__}", path="head")
    return model.head


def slot_log_probs(model, prefix: torch.Tensor, canvases: list[list[int]], locked: list[set[int]], pad_id: int) -> torch.Tensor:
    """(B, G, V + 1) per-slot log-probabilities (last class: no insertion), G = longest canvas + 1."""
    head = enconter_head(model)
    slots = slot_states(model, prefix, canvases, pad_id)
    closed = torch.zeros(slots.shape[:2], dtype=torch.bool, device=slots.device)
    for b, c in enumerate(canvases):
        closed[b, len(c) + 1 :] = True
        for s in locked[b]:
            closed[b, s] = True
    logits = head(slots)
    logits = logits if logits.dtype == torch.float64 else logits.float()
    if head.eos_id is not None:
        logits[..., head.eos_id] = float("-inf")
    logits[..., :-1] = logits[..., :-1].masked_fill(closed[:, :, None], float("-inf"))
    return logits.log_softmax(-1)


def build(config, ctx):
    return EnconterHead(ctx.vocab_size, ctx.d_model, ctx.get("eos_id"), config.tie_weights, config.init_std)
