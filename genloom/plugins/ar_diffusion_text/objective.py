"""The AR-Diffusion objective: the DiffuSeq loss with per-token timesteps on the speed line.

Per sequence a sentence-level ``t ~ U[0, N + T]``; target token n is noised to ``f(n, t)``
(``timesteps.token_timesteps``), the source stays clean at timestep 0, and the loss is
``genloom.toolkit.embedding_diffusion.embedding_diffusion_loss`` over the target block.
"""

from __future__ import annotations

import torch

from genloom.core.model import Objective
from genloom.core.pattern import FULL
from genloom.toolkit import embedding_diffusion as ed

from .timesteps import token_timesteps


class ArDiffusion(Objective):
    pattern = FULL

    def __init__(self, source_length: int, target_length: int, schedule, anchor: float):
        super().__init__()
        self.source_length, self.target_length, self.schedule, self.anchor = source_length, target_length, schedule, anchor

    def token_times(self, batch_size: int, device=None, generator=None) -> torch.Tensor:
        """(B, N) training timesteps: f(n, t) for one uniform sentence-level t per sequence."""
        sentence = torch.rand(batch_size, generator=generator, dtype=torch.float64) * (self.target_length + self.schedule.steps)
        return token_timesteps(sentence, self.target_length, self.schedule.steps, self.anchor).float().to(device)

    def loss(self, model, batch):
        ed.embedding_head(model, "ar-diffusion")
        ids = batch["ids"]
        B = ids.shape[0]
        t = ed.with_clean_source(self.token_times(B, ids.device), self.source_length)
        noised = ed.target_positions(B, self.source_length, self.target_length, ids.device)
        out = ed.embedding_diffusion_loss(model, ids, t, noised, self.schedule)
        return {k: v for k, v in out.items() if not k.startswith("_")}


def build(config, ctx):
    source_length, target_length = ed.target_length_of(ctx, "ar-diffusion")
    return ArDiffusion(source_length, target_length, ed.schedule_of(ctx), float(config.anchor))
