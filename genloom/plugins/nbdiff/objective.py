"""The NBDiff objective: context-causal block diffusion + auxiliary AR loss, with block-size growth.

One pass over ``[x_t, x_0]`` under :class:`genloom.toolkit.blocks.ContextCausalPattern`:

    L = (1/N) sum_j 1[masked_j] / t_{b(j)} CE(shifted prediction_j, x_0^j)  +  ar_weight * (1/N) sum_j CE(clean row j-1, x_0^j)

The clean half is causal, so its rows are next-token predictions: the second term is the AR loss
on every scored token. The block size is ``block_sizes[k]`` while the training step is below
``growth_steps[k]``.
"""

from __future__ import annotations

import torch

from genloom.core.model import Objective
from genloom.toolkit.blocks import (ContextCausalPattern, ConvertsFromAR, block_mask_rates, block_pass, masked_nll, sequence_batch,
                                    shifted_block_logits)


class NBDiffObjective(ConvertsFromAR, Objective):
    def __init__(self, config, *, mask_id: int, seq_len: int | None = None):
        super().__init__()
        self.config = config
        self.mask_id = int(mask_id)
        self.pattern = ContextCausalPattern(block_size=config.block_sizes[-1], seq_len=(seq_len or config.block_sizes[-1]) + 1)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # training steps seen (saved, so growth resumes)
        self.init_conversion()

    def block_size(self) -> int:
        """The block size of the current training step (the growth schedule)."""
        step = int(self.step)
        for size, until in zip(self.config.block_sizes, self.config.growth_steps):
            if step < until:
                return size
        return self.config.block_sizes[-1]

    def loss_given_noise(self, model, ids, scored, masked, rates, block_size):
        x_t = torch.where(masked, torch.full_like(ids, self.mask_id), ids)
        outputs = block_pass(model, x_t, ids, block_size, context_causal=True)
        logits = shifted_block_logits(model, x_t, ids, block_size, outputs=outputs)
        nll = masked_nll(logits, ids, self.mask_id)
        count = scored.sum().clamp_min(1).float()
        diffusion = torch.where(masked, nll / rates.to(nll.dtype), torch.zeros_like(nll)).sum() / count
        clean = outputs[1]
        ar_nll = masked_nll(torch.cat([clean[:, :1], clean[:, :-1]], 1), ids, self.mask_id)
        ar = torch.where(scored, ar_nll, torch.zeros_like(ar_nll)).sum() / count
        return {"loss": diffusion + self.config.ar_weight * ar, "diffusion_loss": diffusion.detach(), "ar_loss": ar.detach(),
                "_nats": (diffusion * count).detach(), "_tokens": count.detach(), "block_size": torch.tensor(float(block_size))}

    def loss(self, model, batch, *, generator=None):
        self.maybe_convert(model, self.config.ar_run)
        c = self.config
        block_size = self.block_size()
        if model.training:
            self.step += 1
        ids, scored = sequence_batch(batch)
        rates = block_mask_rates(ids.shape[0], ids.shape[1], block_size, c.mask_rate_min, c.mask_rate_max,
                                 generator=generator, device=ids.device).clamp_min(c.min_rate)
        masked = scored & (torch.rand(ids.shape, generator=generator, device=ids.device) < rates)
        return self.loss_given_noise(model, ids, scored, masked, rates, block_size)


def build(config, ctx) -> NBDiffObjective:
    return NBDiffObjective(config, mask_id=ctx.mask_id, seq_len=ctx.get("seq_len"))
