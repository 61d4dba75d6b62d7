"""The FreeCache decoder: stale-key/value reuse outside the current block, optional AR guidance.

Each step: (1) the network call -- a full pass (refresh) at a block start or every
``refresh_every`` steps, otherwise only the current block's columns against the kept keys/values;
(2) without a guide, the confidence sampler's step; with a guide, the block is filled with the
diffusion model's predictions, the guide scores the canvas in one causal pass, and the longest
left-to-right run of masked positions on which both agree is unmasked (at least one position).
"""

from __future__ import annotations

import torch

from genloom.core.pattern import CAUSAL, FULL
from genloom.toolkit.canvas import ConfidenceCanvasDecoder, predict
from genloom.toolkit.canvas_cache import StaleCache
from genloom.toolkit.commit import threshold_positions
from genloom.toolkit.draft import load_guide


def agreeing_run(agree: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Boolean (B, L): the allowed positions, left to right, up to (excluding) the first allowed one
    that does not agree."""
    bad = allowed & ~agree
    before_first_bad = bad.long().cumsum(-1) == 0
    return allowed & before_first_bad


class FreeCache(ConfidenceCanvasDecoder):
    def __init__(self, config, ctx, mask_id: int):
        super().__init__(config, ctx, mask_id)
        self._guide = None

    @property
    def guide(self):
        if self.config.guide is None:
            return None
        if self._guide is None:
            self._guide = load_guide(self.config.guide, self.ctx, self.config.guide_seed)
        return self._guide

    def start(self, session) -> None:
        super().start(session)
        s = session.scratch
        s["cache"] = StaleCache(session.model, s["canvas_valid"], FULL, counter=lambda n: session.metrics.count_forward("target", n))
        s["refreshed_at"] = None
        s["refreshed_block"] = None

    def network(self, session) -> torch.Tensor:
        s = session.scratch
        cache = s["cache"]
        region = self.region(session)
        block = int(region.any(0).nonzero().min()) if bool(region.any()) else -1  # the block's first column
        stale = s["refreshed_at"] is None or s["step_index"] - s["refreshed_at"] >= self.config.refresh_every or block != s["refreshed_block"]
        if stale:
            logits = cache.refresh(s["canvas"])
            s["refreshed_at"], s["refreshed_block"] = s["step_index"], block
        else:
            logits = cache.logits(s["canvas"], region.any(0).nonzero().flatten())
        session.metrics.extra.update(positions_computed=cache.positions, refreshes=cache.refreshes)
        if session.processors:
            P = s["gen_start"]
            logits = torch.cat([logits[:, :P], session.process(logits[:, P:], session.history())], 1)
        return logits

    def step(self, session) -> None:
        if self.guide is None:
            return super().step(session)
        s = session.scratch
        logits = self.network(session)
        tokens, confidence, _ = predict(logits, self.mask_id, self.config.temperature, session.generator)
        masked = s["canvas"] == self.mask_id
        allowed = masked & self.region(session)
        filled = torch.where(allowed, tokens, s["canvas"])
        # masks are left only after the block: causally invisible to it, and outside the guide's vocabulary
        filled_for_guide = torch.where(filled == self.mask_id, torch.zeros_like(filled), filled)
        guide_out = session.forward(filled_for_guide, valid=s["canvas_valid"], pattern=CAUSAL, model=self.guide, name="guide")
        guess = guide_out.argmax(-1)
        guess = torch.cat([guess[:, :1], guess[:, :-1]], 1)  # the guide's choice for position j is read at j - 1
        chosen = agreeing_run(guess == tokens, allowed)
        chosen = torch.where(chosen.any(-1, keepdim=True), chosen, threshold_positions(confidence, allowed, float("inf")))
        s["canvas"] = torch.where(chosen, tokens, s["canvas"])
        s["guide_accepted"] = s.get("guide_accepted", 0) + int(chosen.sum())
        session.metrics.extra["guide_accepted"] = s["guide_accepted"]
        s["step_index"] += 1

    def done(self, session) -> bool:
        if self.guide is not None:  # guided steps are not budgeted: decode until nothing is masked
            return not bool((session.scratch["canvas"] == self.mask_id).any())
        return super().done(session)

    def region(self, session) -> torch.Tensor:
        if self.guide is not None:
            return self.first_open_block(session)
        return super().region(session)


def build(config, ctx) -> FreeCache:
    return FreeCache(config, ctx, ctx.mask_id)
