"""The hyperschedule objective: one NELBO for every per-position schedule.

Batch: next-token windows (``ids`` (B, L+1), ``mask`` (B, L) over ``ids[:, 1:]``) or ``ids`` with a
``prompt_mask``. The scored positions are numbered 0..n-1 (the schedule's positions); one step t
in 1..T per sequence; token i is noised when ``u_i < m(i, t)``; the loss per scored token is
``T * sum_i 1[noised_i] w(i, t) (-log p(x_0^i | x_t))`` with ``w = (m(i,t) - m(i,t-1)) / m(i,t)``.
"""

from __future__ import annotations

import torch

from genloom.core.model import Objective
from genloom.core.pattern import CAUSAL, FULL
from genloom.toolkit.blocks import masked_nll
from genloom.toolkit.schedules import make_schedule, nelbo_terms, sample_steps


def schedule_for(fields, length: int):
    T = fields.steps or length
    if fields.schedule == "block":
        n_blocks = -(-length // fields.block_size)
        spb = max(1, T // n_blocks)
        return make_schedule("block", steps=n_blocks * spb, block_size=fields.block_size, steps_per_block=spb)
    return make_schedule(fields.schedule, steps=T, length=length, width=fields.width)


def denoise(model, x_t: torch.Tensor, attention: str, valid=None) -> torch.Tensor:
    """Predictions for every position: bidirectional, or causal read with the AR shift."""
    if attention == "full":
        return model(x_t, pattern=FULL, valid=valid)
    out = model(x_t, pattern=CAUSAL, valid=valid)
    return torch.cat([out[:, :1], out[:, :-1]], 1)


class HyperschedulesObjective(Objective):
    def __init__(self, config, *, mask_id: int, vocab_size: int):
        super().__init__()
        self.config = config
        self.mask_id = int(mask_id)
        self.vocab_size = int(vocab_size)
        self.pattern = FULL if config.attention == "full" else CAUSAL

    def scored(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        ids = batch["ids"]
        if "prompt_mask" in batch:
            return ids, ~batch["prompt_mask"].bool()
        scored = torch.ones_like(ids, dtype=torch.bool)
        mask = batch.get("mask")
        if mask is not None and mask.shape[1] == ids.shape[1] - 1:
            scored[:, 1:] = mask.bool()
        scored[:, 0] = False  # the first token conditions, as in next-token training
        return ids, scored

    def corrupt(self, ids, scored, schedule, t, u, v=None, noise_tokens=None):
        """(x_t, noised) for steps t (B,): absorbing, or hybrid with probability epsilon per noised token."""
        positions = (scored.long().cumsum(1) - 1).clamp_min(0)
        level = schedule.level(positions, t.reshape(-1, 1))
        noised = scored & (u < level)
        x_t = torch.where(noised, torch.full_like(ids, self.mask_id), ids)
        eps = self.config.epsilon
        if eps > 0:
            uniform = noised & (v < eps)
            x_t = torch.where(uniform, noise_tokens, x_t)
        return x_t, noised, positions

    def step_loss(self, model, ids, scored, schedule, t, u, v=None, noise_tokens=None):
        x_t, noised, positions = self.corrupt(ids, scored, schedule, t, u, v, noise_tokens)
        logits = denoise(model, x_t, self.config.attention)
        nll = masked_nll(logits, ids, self.mask_id)
        terms = nelbo_terms(nll, noised, schedule, t, positions)
        return schedule.steps * terms.sum(), noised

    def loss(self, model, batch, *, generator=None):
        ids, scored = self.scored(batch)
        length = int(scored.sum(-1).max())
        schedule = schedule_for(self.config, max(length, 1))
        t = sample_steps(ids.shape[0], schedule.steps, generator=generator, device=ids.device, antithetic=self.config.antithetic)
        u = torch.rand(ids.shape, generator=generator, device=ids.device, dtype=torch.float64)
        v = torch.rand(ids.shape, generator=generator, device=ids.device)
        noise_tokens = torch.randint(0, self.vocab_size, ids.shape, generator=generator, device=ids.device)
        noise_tokens = torch.where(noise_tokens == self.mask_id, (noise_tokens + 1) % self.vocab_size, noise_tokens)
        nats, noised = self.step_loss(model, ids, scored, schedule, t, u, v, noise_tokens)
        count = scored.sum().clamp_min(1).float()
        return {"loss": nats / count, "noised_fraction": noised.sum() / count, "_nats": nats.detach(), "_tokens": count.detach()}

    def exact_loss(self, model, batch) -> torch.Tensor:
        """The loss averaged over every step t = 1..T with one shared uniform draw (no epsilon noise):
        for 0/1 schedules (the staircase) the exact NELBO per scored token."""
        ids, scored = self.scored(batch)
        schedule = schedule_for(self.config, int(scored.sum(-1).max()))
        u = torch.zeros(ids.shape, dtype=torch.float64, device=ids.device)
        total = 0.0
        for step in range(1, schedule.steps + 1):
            t = torch.full((ids.shape[0],), step, device=ids.device)
            nats, _ = self.step_loss(model, ids, scored, schedule, t, u)
            total = total + nats / schedule.steps
        return total / scored.sum().clamp_min(1)


def build(config, ctx) -> HyperschedulesObjective:
    return HyperschedulesObjective(config, mask_id=ctx.mask_id, vocab_size=ctx.vocab_size)
