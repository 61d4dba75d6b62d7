"""Next-token prediction with loss, perplexity, bits per token and bits per byte."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from genloom.core.model import Objective
from genloom.core.pattern import CAUSAL


class NextToken(Objective):
    """Batch: ``ids`` (B, L+1); optional ``mask`` (B, L) of scored targets and ``target_bytes`` (B,)."""

    pattern = CAUSAL

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

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
    return NextToken(config.label_smoothing)
