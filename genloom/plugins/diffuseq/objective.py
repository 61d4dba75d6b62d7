"""The DiffuSeq objective: partial noising and the target-only loss.

Batch: ``SourceTargetPairs`` samples (``ids`` = ``[source block | target, eos, padding]``). One t
per sequence; every target position (its padding included: the block has a fixed length) is
noised to t and scored; every source position is clean (timestep 0) and unscored. The loss is
``genloom.toolkit.embedding_diffusion.embedding_diffusion_loss``.
"""

from __future__ import annotations

import torch

from genloom.core.model import Objective
from genloom.core.pattern import FULL
from genloom.toolkit import embedding_diffusion as ed


class DiffuSeq(Objective):
    pattern = FULL

    def __init__(self, source_length: int, target_length: int, schedule):
        super().__init__()
        self.source_length, self.target_length, self.schedule = source_length, target_length, schedule

    def loss(self, model, batch):
        ed.embedding_head(model, "diffuseq")
        ids = batch["ids"]
        B = ids.shape[0]
        t = torch.randint(1, self.schedule.steps + 1, (B, 1), device=ids.device).float().expand(B, self.target_length)  # one t per sequence
        noised = ed.target_positions(B, self.source_length, self.target_length, ids.device)
        out = ed.embedding_diffusion_loss(model, ids, ed.with_clean_source(t, self.source_length), noised, self.schedule)
        return {k: v for k, v in out.items() if not k.startswith("_")}


def build(config, ctx):
    source_length, target_length = ed.target_length_of(ctx, "diffuseq")
    return DiffuSeq(source_length, target_length, ed.schedule_of(ctx))
