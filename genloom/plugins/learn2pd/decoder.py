"""The Learn2PD decoder: the confidence sampler's step plus the filter's accepted positions, and EoTP.

Each step: predictions and probabilities from one network call; the scheduled positions of the
current block (the base sampler's rule); plus every masked position of the block whose filter
probability is >= ``filter_threshold``; then, with ``end_of_text``, masks after a fixed EOS are
filled with EOS. ``oracle`` (a (B, G) tensor of reference tokens) replaces the filter by the
exact rule "the prediction equals the reference"; when no position qualifies, the scheduled
positions take the reference's tokens.
"""

from __future__ import annotations

import torch

from genloom.toolkit.canvas import ConfidenceCanvasDecoder, predict, top_k_positions, transfer_schedule
from genloom.plugins.learn2pd.filter import features, load_filter


class Learn2PD(ConfidenceCanvasDecoder):
    def __init__(self, config, ctx, mask_id: int, eos_id: int | None):
        super().__init__(config, ctx, mask_id, eos_id=eos_id if config.end_of_text else None)
        self.filter = load_filter(config.filter_path) if config.filter_path else None
        self.oracle: torch.Tensor | None = None
        self.record = False

    def start(self, session) -> None:
        super().start(session)
        self.recorded_features, self.recorded_predictions, self.recorded_masks = [], [], []
        B = session.batch_size
        dev = session.prompt_ids.device
        session.scratch.update(filter_accepted=0, row_block=torch.full((B,), -1, dtype=torch.long, device=dev),
                               row_inner=torch.zeros(B, dtype=torch.long, device=dev),
                               row_schedule=torch.zeros(B, session.scratch["steps_per_block"], dtype=torch.long, device=dev))

    # A block that empties early (filter, EoTP) hands over to the next one at once: each row follows
    # its first block with masks, with the base schedule restarted when it enters a block. Without
    # early unmasking this is exactly the base sampler's block-by-block schedule.
    def region(self, session) -> torch.Tensor:
        return self.first_open_block(session)

    def n_transfer(self, session, masked: torch.Tensor) -> torch.Tensor:
        s = session.scratch
        region = self.region(session)
        block = torch.where(region.any(-1), (region.long().argmax(-1) - s["gen_start"]) // s["block_length"], torch.full_like(s["row_block"], -1))
        entered = block != s["row_block"]
        if bool(entered.any()):
            fresh = transfer_schedule((masked & region).sum(-1), s["steps_per_block"])
            s["row_schedule"] = torch.where(entered.reshape(-1, 1), fresh, s["row_schedule"])
            s["row_inner"] = torch.where(entered, torch.zeros_like(s["row_inner"]), s["row_inner"])
            s["row_block"] = block
        inner = s["row_inner"].clamp_max(s["steps_per_block"] - 1)
        k = s["row_schedule"].gather(1, inner.reshape(-1, 1)).squeeze(1)
        s["row_inner"] = s["row_inner"] + 1
        return torch.where(s["row_inner"] > s["steps_per_block"], (masked & region).sum(-1), k)

    def done(self, session) -> bool:
        return not bool((session.scratch["canvas"] == self.mask_id).any())

    def step(self, session) -> None:
        s = session.scratch
        logits = self.network(session)
        tokens, confidence, probs = predict(logits, self.mask_id, self.config.temperature, session.generator)
        masked = s["canvas"] == self.mask_id
        region = self.region(session)
        allowed = masked & region
        scheduled = top_k_positions(self.score(session, tokens, confidence, probs), allowed, self.n_transfer(session, masked))
        if self.record:
            self.recorded_features.append(features(probs, masked, region, s["gen_start"]))
            self.recorded_predictions.append(tokens.clone())
            self.recorded_masks.append(allowed.clone())
        extra = torch.zeros_like(allowed)
        if self.oracle is not None:
            P = s["gen_start"]
            reference = torch.cat([s["canvas"][:, :P], self.oracle.to(tokens)], 1)
            extra = allowed & (tokens == reference)
            fallback = ~extra.any(-1, keepdim=True)
            tokens = torch.where(fallback & scheduled, reference, tokens)
            chosen = torch.where(fallback, scheduled, extra)
        else:
            if self.filter is not None:
                with torch.no_grad():
                    extra = allowed & (self.filter(features(probs, masked, region, s["gen_start"])) >= self.config.filter_threshold)
            chosen = scheduled | extra
        s["filter_accepted"] += int((extra & ~scheduled).sum())
        s["canvas"] = torch.where(chosen, tokens, s["canvas"])
        if self.eos_id is not None:
            from genloom.toolkit.commit import fill_after_eos

            s["canvas"], filled = fill_after_eos(s["canvas"], s["gen_start"], self.eos_id, self.mask_id)
            s["eos_filled"] = s.get("eos_filled", 0) + int(filled.sum())
        s["step_index"] += 1
        session.metrics.extra.update(filter_accepted=s["filter_accepted"], eos_filled=s.get("eos_filled", 0), decode_steps=s["step_index"])
        if self.done(session):
            self.final_canvas = s["canvas"].clone()


def build(config, ctx) -> Learn2PD:
    return Learn2PD(config, ctx, ctx.mask_id, ctx.get("eos_id"))
