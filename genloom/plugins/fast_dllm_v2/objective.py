"""Fast-dLLM v2's training objective: complementary masking on shifted block diffusion.

For each sequence, block b draws a rate ``t_b``; view 1 masks each scored token of the block
with probability ``t_b``, view 2 masks exactly the scored tokens view 1 left clean. Both views go
through one ``[x_t, x_0]`` pass (batch 2B) and the loss is the mean cross-entropy over the masked
tokens of both views: every scored token is predicted exactly once, once as a target while the
other view uses it as context.
"""

from __future__ import annotations

import math

import torch

from genloom.core.model import Objective
from genloom.toolkit.blocks import (ConvertsFromAR, NoisyCleanPattern, block_mask_rates, masked_nll, sequence_batch,
                                    shifted_block_logits)
from genloom.toolkit.masking import apply_mask, complementary_masks


class FastDLLMv2Objective(ConvertsFromAR, Objective):
    def __init__(self, config, *, mask_id: int, seq_len: int | None = None):
        super().__init__()
        self.config = config
        self.mask_id = int(mask_id)
        self.block_size = config.block_size
        self.pattern = NoisyCleanPattern(block_size=self.block_size, seq_len=(seq_len or self.block_size) + 1)
        self.init_conversion()

    def views(self, ids: torch.Tensor, scored: torch.Tensor, generator=None):
        """(2B, L) noisy ids, (2B, L) masks: the two complementary views of each sequence."""
        c = self.config
        rates = block_mask_rates(ids.shape[0], ids.shape[1], self.block_size, c.mask_rate_min, c.mask_rate_max,
                                 generator=generator, device=ids.device)
        first, second = complementary_masks(scored, rates, generator=generator)
        masked = torch.cat([first, second], 0)
        return apply_mask(ids.repeat(2, 1), masked, self.mask_id), masked

    def loss(self, model, batch, *, generator=None):
        self.maybe_convert(model, self.config.ar_run)
        ids, scored = sequence_batch(batch)
        x_t, masked = self.views(ids, scored, generator)
        logits = shifted_block_logits(model, x_t, ids.repeat(2, 1), self.block_size)
        nll = masked_nll(logits, ids.repeat(2, 1), self.mask_id)
        count = scored.sum().clamp_min(1).float()  # = masked.sum(): each scored token is masked once
        nats = torch.where(masked, nll, torch.zeros_like(nll)).sum()
        out = {"loss": nats / count, "_nats": nats.detach(), "_tokens": count.detach(),
               "mask_rate_first_view": masked[: ids.shape[0]].sum().float() / count}
        if isinstance(batch, dict) and "target_bytes" in batch:
            out["_bytes"] = batch["target_bytes"].sum().clamp_min(1.0).detach()
            out["bits_per_byte"] = out["_nats"] / math.log(2) / out["_bytes"]
        return out


def build(config, ctx) -> FastDLLMv2Objective:
    return FastDLLMv2Objective(config, mask_id=ctx.mask_id, seq_len=ctx.get("seq_len"))
