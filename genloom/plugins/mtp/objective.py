"""Training the gated LoRA, the mask embedding and the sampler (the base model stays as it is).

Batch: ``ids`` (B, T) (the next-token objective's ``L + 1`` window) and an optional ``mask``
(B, T - 1) of scored next-token targets (used by the optional next-token loss).

For prefix lengths ``n`` ("cuts"), a block of ``m`` masks stands for the tokens after ``x_{n-1}``:
mask i (i = 1..m) is trained to predict ``x_{n+i}`` (the base next-token position ``n-1`` predicts
``x_n``). Two layouts:

- ``blocks`` (default, the paper's): one pass over ``[x_0 .. x_{T-1}, block_1, .., block_c]``
  with :class:`MaskBlocksPattern`: ordinary tokens attend causally to ordinary tokens only (so
  their hidden states are the base model's, and serve as the consistency targets for free); block
  j attends to ``x_<n_j`` and causally within itself, and its masks take the rotary positions
  ``n_j .. n_j + m - 1`` (``pattern.positions``), exactly where they sit at decoding time. The cuts
  are evenly spaced with a random offset, the same for the whole batch;
- ``rows``: one causal row ``[x_0 .. x_{n-1}, <mask> x m]`` per cut (right-padded; with the causal
  pattern the padding is never seen by a scored position) plus a clean pass for the targets; any
  causal backbone serves it (a recurrent one too).

Losses:

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

from dataclasses import dataclass

from genloom.core.model import Objective
from genloom.core.pattern import CAUSAL, AttentionPattern


@dataclass(frozen=True)
class MaskBlocksPattern(AttentionPattern):
    """Ordinary tokens ``0..length-1`` then mask blocks of ``n_masks``; block j stands after the prefix
    of length ``cuts[j]``. Ordinary tokens never see a mask; a mask sees ``x_<cut`` and its own block
    causally; ``positions`` gives block j's masks the positions ``cuts[j] + i``."""

    kind: str = "mtp_mask_blocks"
    length: int = 1
    cuts: tuple[int, ...] = (1,)
    n_masks: int = 1

    def _split(self, pos: torch.Tensor):
        rel = pos - self.length
        is_mask = rel >= 0
        rel = rel.clamp_min(0)
        block = torch.div(rel, self.n_masks, rounding_mode="floor").clamp(max=len(self.cuts) - 1)
        cut = torch.tensor(self.cuts, device=pos.device, dtype=pos.dtype)[block]
        return is_mask, block, cut, rel % self.n_masks

    def allowed(self, q_pos: torch.Tensor, kv_pos: torch.Tensor) -> torch.Tensor:
        q_mask, q_block, q_cut, _ = self._split(q_pos)
        kv_mask, kv_block, _, _ = self._split(kv_pos)
        causal = kv_pos <= q_pos
        ordinary = ~q_mask & ~kv_mask & causal
        context = q_mask & ~kv_mask & (kv_pos < q_cut)
        own_block = q_mask & kv_mask & (kv_block == q_block) & causal
        return ordinary | context | own_block

    def positions(self, index: torch.Tensor) -> torch.Tensor:
        is_mask, _, cut, i = self._split(index)
        return torch.where(is_mask, cut + i, index)


def spaced_cuts(length: int, n_masks: int, count: int, generator=None) -> tuple[int, ...]:
    """``count`` prefix lengths evenly spaced over ``[1, length - n_masks - 1]`` with a random offset
    (a bounded set of distinct patterns, every prefix length reachable)."""
    top = length - n_masks - 1
    count = max(1, min(count, top))
    stride = top // count
    offset = int(torch.randint(1, stride + 1, (1,), generator=generator))
    return tuple(offset + j * stride for j in range(count))


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

    def __init__(self, config, mask_id: int):
        super().__init__()
        self.config = config
        self.mask_id = mask_id

    # ``pattern`` stays causal: it is also the model's default pattern at inference, where the masks
    # simply follow the context; the block layout's own pattern is passed explicitly in ``_blocks``.
    pattern = CAUSAL

    def loss(self, model, batch: dict) -> dict[str, torch.Tensor]:
        m = self.config.n_masks
        if not hasattr(model.head, "sampler_logits"):
            raise TypeError("the mtp objective needs the 'mtp' head (it owns the sampler and the mask embedding)")
        ids = batch["ids"]
        T = ids.shape[1]
        if T < m + 2:
            raise ValueError(f"mtp: sequences of length {T} are too short for n_masks={m} (need at least {m + 2})")
        if self.config.layout == "blocks":
            if hasattr(model.backbone, "supports") and not model.backbone.supports(MaskBlocksPattern(n_masks=m)):
                raise ValueError(f"mtp: the backbone serves only {sorted(getattr(model.backbone, 'patterns', []))} attention patterns; "
                                 "layout 'blocks' needs arbitrary patterns (use objective.layout=rows)")
            return self._blocks(model, batch)
        return self._rows(model, batch)

    def _blocks(self, model, batch):
        cfg, m = self.config, self.config.n_masks
        ids = batch["ids"]
        B, T = ids.shape
        cuts = spaced_cuts(T, m, cfg.cuts_per_sequence)
        c = len(cuts)
        pattern = MaskBlocksPattern(length=T, cuts=cuts, n_masks=m)
        inputs = torch.cat([ids, torch.full((B, c * m), self.mask_id, dtype=ids.dtype, device=ids.device)], 1)
        h = model.hidden(inputs, pattern=pattern)
        clean = h[:, :T]  # ungated and blind to the masks: the base model's hidden states
        h_masks = h[:, T:].reshape(B, c * m, h.shape[-1])
        n = torch.tensor(cuts, device=ids.device).repeat_interleave(m)  # (c*m,)
        target_pos = n + 1 + torch.arange(m, device=ids.device).repeat(c)  # x_{n+i}
        targets = ids[:, target_pos]
        previous = ids[:, target_pos - 1]
        teacher = clean.detach()[:, target_pos - 1]
        return self._losses(model, batch, clean, h_masks, targets, previous, teacher, m)

    def _rows(self, model, batch):
        cfg, m = self.config, self.config.n_masks
        ids = batch["ids"]
        B, T = ids.shape
        low = max(1, min(cfg.min_prefix, T - m - 1))
        cuts = torch.randint(low, T - m, (B, cfg.cuts_per_sequence), device=ids.device)
        rows, source, n = build_rows(ids, cuts, m, self.mask_id)

        # teacher: the base model on the clean sequences (no mask, so every gate is off)
        with torch.set_grad_enabled(cfg.next_token_weight > 0 and torch.is_grad_enabled()):
            clean = model.hidden(ids, pattern=CAUSAL)
        h = model.hidden(rows, pattern=CAUSAL)
        offsets = torch.arange(m, device=ids.device)
        mask_pos = n[:, None] + offsets[None, :]  # (R, m) where the masks sit in the rows
        h_masks = h.gather(1, mask_pos[..., None].expand(-1, -1, h.shape[-1]))  # (R, m, D)
        target_pos = n[:, None] + 1 + offsets[None, :]  # x_{n+i}, i = 1..m
        targets = ids[source].gather(1, target_pos)
        previous = ids[source].gather(1, target_pos - 1)
        teacher = clean.detach()[source].gather(1, (target_pos - 1)[..., None].expand(-1, -1, clean.shape[-1]))
        return self._losses(model, batch, clean, h_masks, targets, previous, teacher, m)

    def _losses(self, model, batch, clean, h_masks, targets, previous, teacher, m):
        """The weighted losses; the mask tensors are (N, K, ...) with K = m (rows) or c*m (blocks)."""
        cfg, head, ids = self.config, model.head, batch["ids"]
        out: dict[str, torch.Tensor] = {}
        total = clean.new_zeros((), dtype=torch.float32)
        if cfg.next_token_weight > 0:
            ntp = head.loss(head(clean[:, :-1]), ids[:, 1:], batch.get("mask"))
            out["next_token"] = ntp.detach()
            total = total + cfg.next_token_weight * ntp

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
            consistency = F.mse_loss(h_masks.float(), teacher.float())
            total = total + cfg.consistency_weight * consistency
            out["consistency"] = consistency.detach()
        with torch.no_grad():
            hits = (sampler_logits.argmax(-1) == targets).float().reshape(targets.shape[0], -1, m).mean((0, 1))
            for i in range(m):
                out[f"acc_mask{i + 1}"] = hits[i]
        out["loss"] = total
        return out


def build(config, ctx) -> MTPObjective:
    return MTPObjective(config, int(ctx.mask_id))
