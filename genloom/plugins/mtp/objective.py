"""Training the gated LoRA, the mask embedding and the sampler (the base model stays as it is).

Batch: ``ids`` (B, L+1) and an optional ``mask`` (B, L) of scored next-token targets (the
next-token objective's layout; ``mask`` is used by the optional next-token loss). For every sequence ``x`` of the batch, ``cuts_per_sequence`` prefix lengths ``n`` are drawn and a
row ``[x_0 .. x_{n-1}, <mask> x m]`` is built (rows are right-padded; with the causal pattern the
padding is never seen by a scored position). The i-th mask (i = 1..m) is trained to predict
``x_{n+i}`` (the base next-token position ``n-1`` predicts ``x_n``):

- ``sampler``: cross-entropy of the sampler's logits, teacher-forced on the previous true token;
- ``mask_ce``: cross-entropy of the base head's projection of the mask hidden state (the raw
  multi-token prediction the gated LoRA learns);
- ``consistency``: the latent consistency loss, mean squared distance between the mask hidden
  state and the (detached) hidden state the base model has at the position that predicts the same
  token with the full context;
- ``next_token`` (optional, only useful when the base is trainable): ordinary next-token loss.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from genloom.core.model import Objective
from genloom.core.pattern import CAUSAL


def build_rows(ids: torch.Tensor, prefix_lengths: torch.Tensor, n_masks: int, mask_id: int, pad_id: int = 0):
    """Rows ``[ids[b, :n], mask x m, pad...]`` for prefix lengths (B, C); returns (B*C, max n + m) ids,
    the (B*C,) source row index and the (B*C,) prefix lengths."""
    B, T = ids.shape
    n = prefix_lengths.reshape(-1)
    source = torch.arange(B, device=ids.device).repeat_interleave(prefix_lengths.shape[1])
    width = int(n.max()) + n_masks
    j = torch.arange(width, device=ids.device)[None, :]
    rows = ids[source].gather(1, j.clamp(max=T - 1).expand(n.numel(), -1))
    is_mask = (j >= n[:, None]) & (j < n[:, None] + n_masks)
    rows = torch.where(is_mask, torch.full_like(rows, mask_id), rows)
    rows = torch.where(j >= n[:, None] + n_masks, torch.full_like(rows, pad_id), rows)
    return rows, source, n


class MTPObjective(Objective):
    """Masked-input multi-token prediction with gated LoRA (sampler + raw CE + latent consistency)."""

    pattern = CAUSAL

    def __init__(self, config, mask_id: int):
        super().__init__()
        self.config = config
        self.mask_id = mask_id

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        cfg, m = self.config, self.config.n_masks
        head = model.head
        if not hasattr(head, "sampler_logits"):
            raise TypeError("the mtp objective needs the 'mtp' head (it owns the sampler and the mask embedding)")
        ids = batch["ids"]
        B, T = ids.shape
        if T < m + 2:
            raise ValueError(f"mtp: sequences of length {T} are too short for n_masks={m} (need at least {m + 2})")
        low = max(1, min(cfg.min_prefix, T - m - 1))
        cuts = torch.randint(low, T - m, (B, cfg.cuts_per_sequence), device=ids.device)
        rows, source, n = build_rows(ids, cuts, m, self.mask_id)

        # teacher: the base model on the clean sequences (no mask, so every gate is off)
        train_base = cfg.next_token_weight > 0
        with torch.set_grad_enabled(train_base and torch.is_grad_enabled()):
            clean = model.hidden(ids, pattern=CAUSAL)
        out: dict[str, torch.Tensor] = {}
        total = ids.new_zeros((), dtype=torch.float32)
        if train_base:
            ntp = head.loss(head(clean[:, :-1]), ids[:, 1:], batch.get("mask"))
            out["next_token"] = ntp.detach()
            total = total + cfg.next_token_weight * ntp

        h = model.hidden(rows, pattern=CAUSAL)
        offsets = torch.arange(m, device=ids.device)
        mask_pos = n[:, None] + offsets[None, :]  # (R, m) where the masks sit in the rows
        h_masks = h.gather(1, mask_pos[..., None].expand(-1, -1, h.shape[-1]))  # (R, m, D)
        target_pos = n[:, None] + 1 + offsets[None, :]  # x_{n+i}, i = 1..m
        targets = ids[source].gather(1, target_pos)
        previous = ids[source].gather(1, target_pos - 1)

        sampler_logits = head.sampler_logits(h_masks, previous)
        sampler_ce = F.cross_entropy(sampler_logits.float().flatten(0, 1), targets.flatten())
        total = total + cfg.sampler_weight * sampler_ce
        out["sampler_ce"] = sampler_ce.detach()
        if cfg.mask_ce_weight > 0:
            raw = head(h_masks)
            mask_ce = F.cross_entropy(raw.float().flatten(0, 1), targets.flatten())
            total = total + cfg.mask_ce_weight * mask_ce
            out["mask_ce"] = mask_ce.detach()
        if cfg.consistency_weight > 0:
            teacher = clean.detach()[source].gather(1, (target_pos - 1)[..., None].expand(-1, -1, clean.shape[-1]))
            consistency = F.mse_loss(h_masks.float(), teacher.float())
            total = total + cfg.consistency_weight * consistency
            out["consistency"] = consistency.detach()
        with torch.no_grad():
            hits = (sampler_logits.argmax(-1) == targets).float().mean(0)
            for i in range(m):
                out[f"acc_mask{i + 1}"] = hits[i]
        out["loss"] = total
        return out


def build(config, ctx) -> MTPObjective:
    return MTPObjective(config, int(ctx.mask_id))
