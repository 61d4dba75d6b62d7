"""Next-token prediction with loss, perplexity, bits per token and bits per byte."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from genloom.core.model import Objective
from genloom.core.pattern import CAUSAL, prefix


class NextToken(Objective):
    """Batch: ``ids`` (B, L+1); optional ``mask`` (B, L) of scored targets and ``target_bytes`` (B,).

    On source-conditioned data (the context holds ``source_length``) the pattern is
    ``prefix(source_length)``: the source block is read bidirectionally, the target causally,
    and the data's ``mask`` scores the target only (a prefix LM).
    """

    pattern = CAUSAL

    def __init__(self, label_smoothing: float = 0.0, pattern=None):
        super().__init__()
        self.label_smoothing = label_smoothing
        if pattern is not None:
            self.pattern = pattern

    def loss(self, model, batch):
        ids = batch["ids"]
        inputs, targets = ids[:, :-1], ids[:, 1:]
        mask = batch.get("mask")
        logits = model(inputs, pattern=self.pattern)
        per = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none", label_smoothing=self.label_smoothing)
        if mask is None:
            mask = torch.ones_like(targets, dtype=torch.bool)
        m = mask.flatten().to(per.dtype)
        count = m.sum().clamp_min(1.0)
        nats = (per * m).sum()
        loss = nats / count
        out = {"loss": loss, "ppl": torch.exp(loss.detach().clamp_max(30)), "bits_per_token": loss.detach() / math.log(2), "_nats": nats.detach(), "_tokens": count.detach()}
        if "target_bytes" in batch:
            nbytes = batch["target_bytes"].sum().clamp_min(1.0)
            out["bits_per_byte"] = nats.detach() / math.log(2) / nbytes
            out["_bytes"] = nbytes.detach()
        return out


def build_next_token(config, ctx):
    source_length = ctx.get("source_length") if ctx is not None else None
    return NextToken(config.label_smoothing, pattern=prefix(source_length) if source_length else None)
