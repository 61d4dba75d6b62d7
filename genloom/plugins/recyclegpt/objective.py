"""Training the recyclable module: at position t, ``h_t`` and token t+1 predict token t+2.

Batch: ``ids`` (B, L+1) and an optional ``mask`` (B, L) of scored targets (the next-token
objective's layout). The base head's next-token loss is added unless ``freeze_base``.
"""

from __future__ import annotations

import itertools

import torch
from torch.nn import functional as F

from genloom.core.model import Objective
from genloom.core.pattern import CAUSAL


def _masked_ce(logits, target, mask):
    per = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none")
    m = mask.flatten().to(per.dtype)
    return (per * m).sum() / m.sum().clamp_min(1.0)


class RecycleObjective(Objective):
    pattern = CAUSAL

    def __init__(self, config):
        super().__init__()
        self.config = config

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        head = model.head
        if not hasattr(head, "recycle_logits"):
            raise TypeError("the recyclegpt objective needs the 'recyclegpt' head (it owns the recyclable module)")
        cfg = self.config
        ids = batch["ids"]
        inputs = ids[:, :-1]
        L = inputs.shape[1]
        mask = batch.get("mask")
        mask = torch.ones(ids.shape[0], L, dtype=torch.bool, device=ids.device) if mask is None else mask.bool()
        if cfg.freeze_base:
            for p in itertools.chain(model.backbone.parameters(), head.base.parameters()):
                p.requires_grad_(False)
            with torch.no_grad():
                h = model.hidden(inputs, pattern=CAUSAL)
        else:
            h = model.hidden(inputs, pattern=CAUSAL)
        out: dict[str, torch.Tensor] = {}
        total = h.new_zeros((), dtype=torch.float32)
        if not cfg.freeze_base:
            ce = _masked_ce(head(h), ids[:, 1:], mask)
            out["ce_next"] = ce.detach()
            total = total + ce
        if L >= 2 and cfg.recycle_weight > 0:
            rec = head.recycle_logits(h[:, : L - 1], ids[:, 1:L])  # h_t and token t+1 -> token t+2
            ce_r = _masked_ce(rec, ids[:, 2:], mask[:, 1:])
            out["ce_recycle"] = ce_r.detach()
            with torch.no_grad():
                hit = (rec.argmax(-1) == ids[:, 2:]).flatten().to(ce_r.dtype)
                m = mask[:, 1:].flatten().to(ce_r.dtype)
                out["acc_recycle"] = (hit * m).sum() / m.sum().clamp_min(1.0)
            total = total + cfg.recycle_weight * ce_r
        out["loss"] = total
        return out


def build(config, ctx) -> RecycleObjective:
    return RecycleObjective(config)
