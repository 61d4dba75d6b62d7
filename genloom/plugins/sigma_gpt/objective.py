"""The sigma-GPT objective: next-token prediction in a random order per sequence.

Per row, draw a uniform order of the positions that keeps the first ``fixed`` positions in place
(the source block on source-conditioned data; the first token otherwise, which is the context
every continuation starts from), read the sequence in that order with the double positional
encoding and score each step's prediction of the next position's token (teacher forcing, one
pass). Scored positions: every target position on source-conditioned data (padding included: the
canvas has a fixed length, so an any-order model must also learn where the target ends), else
the batch's ``mask`` (or every position).
"""

from __future__ import annotations

import torch

from genloom.core.model import Objective
from genloom.core.pattern import CAUSAL, prefix
from genloom.toolkit.anyorder import identity_orders, random_orders

from .head import ordered_logits, sigma_head


class SigmaGpt(Objective):
    pattern = CAUSAL

    def __init__(self, order: str = "random", source_length: int | None = None):
        super().__init__()
        self.order, self.source_length = order, source_length
        if source_length:
            self.pattern = prefix(source_length)

    def orders(self, batch_size: int, length: int, device) -> torch.Tensor:
        if self.order == "left-to-right":
            return identity_orders(batch_size, length, device)
        return random_orders(batch_size, length, fixed=self.source_length or 1, device=device)

    def scored(self, batch: dict, order: torch.Tensor) -> torch.Tensor:
        """(B, N-1) bool: is the position predicted at step t scored."""
        predicted = order[:, 1:]
        if self.source_length:
            return predicted >= self.source_length
        mask = batch.get("mask")
        if mask is None:
            return torch.ones_like(predicted, dtype=torch.bool)
        return mask.gather(1, predicted - 1)  # mask[p - 1] scores position p (the next-token layout)

    def loss(self, model, batch, order: torch.Tensor | None = None):
        sigma_head(model)
        ids = batch["ids"]
        order = self.orders(*ids.shape, ids.device) if order is None else order
        logits, targets = ordered_logits(model, ids, order, pattern=self.pattern)
        per = model.head.token_nll(logits, targets)
        m = self.scored(batch, order).to(per.dtype)
        count = m.sum().clamp_min(1.0)
        nats = (per * m).sum()
        return {"loss": nats / count, "_nats": nats.detach(), "_tokens": count.detach()}


def build(config, ctx):
    source_length = ctx.get("source_length") if ctx is not None else None
    return SigmaGpt(config.order, int(source_length) if source_length else None)
