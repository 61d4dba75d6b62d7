"""Training the proposal heads: head i learns ``p_i(y_{t+i} | y_<=t)`` (Stern et al., 2018, Sec. 5.1).

Batch: ``ids`` (B, L+1) and an optional ``mask`` (B, L) of scored targets (the next-token
objective's layout). At input position t, head i (1-based) is scored on token ``ids[t + i]``.

``freeze_base`` (the paper's "frozen" setting) trains only the proposal layers: the backbone runs
without gradients and the base head's parameters (the shared projection) are frozen, so the base
model, and with it greedy decoding, is left exactly as it was. Otherwise ("fine-tuned") the base
model trains jointly, with head 1's loss weighted by ``base_weight``.
"""

from __future__ import annotations

import itertools

import torch
from torch.nn import functional as F

from genloom.core.model import Objective
from genloom.core.pattern import CAUSAL


class BlockwiseObjective(Objective):
    pattern = CAUSAL

    def __init__(self, config):
        super().__init__()
        self.config = config

    def _freeze(self, model) -> None:
        for p in itertools.chain(model.backbone.parameters(), model.head.base.parameters()):
            p.requires_grad_(False)

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        head = model.head
        if not hasattr(head, "proposal_logits"):
            raise TypeError("the blockwise-parallel objective needs the 'blockwise-parallel' head (it owns the proposal heads)")
        cfg = self.config
        ids = batch["ids"]
        inputs = ids[:, :-1]
        L = inputs.shape[1]
        mask = batch.get("mask")
        mask = torch.ones(ids.shape[0], L, dtype=torch.bool, device=ids.device) if mask is None else mask.bool()
        if cfg.freeze_base:
            self._freeze(model)
            with torch.no_grad():
                h = model.hidden(inputs, pattern=CAUSAL)
        else:
            h = model.hidden(inputs, pattern=CAUSAL)
        k = head.block_size
        logits = head.proposal_logits(h)  # (B, L, k, V)
        out: dict[str, torch.Tensor] = {}
        total, weight_sum = logits.new_zeros((), dtype=torch.float32), 0.0
        for i in range(k):
            span = L - i  # positions t with a target t + 1 + i inside the window
            if span <= 0:
                break
            target = ids[:, 1 + i : 1 + i + span]
            scored = mask[:, i : i + span]  # the target ids[t+1+i] is scored where mask[t+i] is
            per = F.cross_entropy(logits[:, :span, i].float().flatten(0, 1), target.flatten(), reduction="none")
            m = scored.flatten().to(per.dtype)
            ce = (per * m).sum() / m.sum().clamp_min(1.0)
            out[f"ce_head{i + 1}"] = ce.detach()
            with torch.no_grad():
                hit = (logits[:, :span, i].argmax(-1) == target).flatten().to(per.dtype)
                out[f"acc_head{i + 1}"] = (hit * m).sum() / m.sum().clamp_min(1.0)
            w = (0.0 if cfg.freeze_base else cfg.base_weight) if i == 0 else 1.0
            if w > 0:
                total = total + w * ce
                weight_sum += w
        out["loss"] = total / max(weight_sum, 1e-12)
        return out


def build(config, ctx) -> BlockwiseObjective:
    return BlockwiseObjective(config)
