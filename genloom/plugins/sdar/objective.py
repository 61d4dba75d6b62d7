"""The SDAR objective: block-diffusion NELBO on an AR-converted model, read with the AR shift.

For blocks of ``block_size`` tokens, block b draws a masking rate ``t_b``; each scored token of
the block is masked with probability ``t_b``. One pass over ``[x_t, x_0]`` gives every block's
predictions given the clean blocks before it; the prediction for position j is read at j - 1
(:func:`genloom.toolkit.blocks.shifted_block_logits`). The loss per scored token is

    sum_j 1[x_t^j = mask] / t_{b(j)} * -log p(x_0^j | x_t^{b(j)}, x_0^{<b(j)})

(linear schedule, the mask token never predicted). With block size 1 and t = 1 it is the AR
model's next-token cross-entropy on the same tokens.
"""

from __future__ import annotations

import math

import torch

from genloom.core.model import Objective
from genloom.toolkit.blocks import ConvertsFromAR, NoisyCleanPattern, block_mask_rates, masked_nll, sequence_batch, shifted_block_logits


class SDARObjective(ConvertsFromAR, Objective):
    def __init__(self, config, *, mask_id: int, seq_len: int | None = None):
        super().__init__()
        self.config = config
        self.mask_id = int(mask_id)
        self.block_size = config.block_size
        self.pattern = NoisyCleanPattern(block_size=self.block_size, seq_len=(seq_len or self.block_size) + 1)
        self.init_conversion()  # ``ar_run`` is copied in before the first step

    def loss_given_noise(self, model, ids, scored, masked, rates):
        x_t = torch.where(masked, torch.full_like(ids, self.mask_id), ids)
        logits = shifted_block_logits(model, x_t, ids, self.block_size)
        nll = masked_nll(logits, ids, self.mask_id)
        terms = torch.where(masked, nll / rates.to(nll.dtype), torch.zeros_like(nll))
        count = scored.sum().clamp_min(1).float()
        nats = terms.sum()
        return {
            "loss": nats / count,
            "masked_ce": (nll * masked).sum().detach() / masked.sum().clamp_min(1),
            "mask_rate": masked.sum().float() / count,
            "_nats": nats.detach(),
            "_tokens": count.detach(),
        }

    def loss(self, model, batch, *, generator=None):
        self.maybe_convert(model, self.config.ar_run)
        c = self.config
        ids, scored = sequence_batch(batch)
        rates = block_mask_rates(ids.shape[0], ids.shape[1], self.block_size, c.mask_rate_min, c.mask_rate_max,
                                 antithetic=c.antithetic, generator=generator, device=ids.device).clamp_min(c.min_rate)
        u = torch.rand(ids.shape, generator=generator, device=ids.device)
        masked = scored & (u < rates)
        out = self.loss_given_noise(model, ids, scored, masked, rates)
        if isinstance(batch, dict) and "target_bytes" in batch:
            out["_bytes"] = batch["target_bytes"].sum().clamp_min(1.0).detach()
            out["bits_per_byte"] = out["_nats"] / math.log(2) / out["_bytes"]
        return out


def build(config, ctx) -> SDARObjective:
    return SDARObjective(config, mask_id=ctx.mask_id, seq_len=ctx.get("seq_len"))
