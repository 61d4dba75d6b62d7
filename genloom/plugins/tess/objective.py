"""The TESS objective: self-conditioned Gaussian diffusion on the target's simplex logits.

``tess_loss`` walks one training example: ``s_0 = simplex(ids, V, k)``; ``x_t`` noises the target
positions to one t per sequence with ``N(0, k^2)`` noise (the source keeps its clean simplex and
timestep 0); with probability ``self_conditioning`` a first pass without gradient predicts logits,
which the second pass reads averaged into its input probabilities (at the target positions only);
the loss is the cross-entropy of the prediction on the target block.
"""

from __future__ import annotations

import torch

from genloom.core.errors import ConfigError
from genloom.core.model import Objective
from genloom.core.pattern import FULL
from genloom.toolkit import embedding_diffusion as ed


def simplex_head(model, who: str) -> ed.SimplexDiffusionHead:
    if not isinstance(model.head, ed.SimplexDiffusionHead):
        raise ConfigError(f"{who} diffuses simplex logits: it needs the 'simplex-diffusion' head, got {type(model.head).__name__}", path="head")
    return model.head


def source_kept(previous: torch.Tensor, x_t: torch.Tensor, noised: torch.Tensor) -> torch.Tensor:
    """The self-conditioning input with the source positions' entries replaced by x_t itself, so
    a clean source is read as it is (the average of a distribution with itself)."""
    return torch.where(noised[..., None], previous, x_t)


def tess_loss(model, ids, t, noised, schedule, k: float, self_conditioning: float, generator=None) -> dict:
    head = simplex_head(model, "tess")
    s0 = ed.simplex(ids, head.vocab_size, k, dtype=head.embed_tokens.weight.dtype)
    noise = k * torch.randn(s0.shape, generator=generator, dtype=s0.dtype).to(s0.device)
    x_t = ed.partial_noise(s0, t, schedule, noise, noised)

    def predict(x, previous):
        return head.denoise(model, x, t, None if previous is None else source_kept(previous, x, noised))

    logits, previous = ed.self_conditioned(predict, x_t, probability=self_conditioning, generator=generator)
    wide = logits if logits.dtype == torch.float64 else logits.float()
    per = torch.nn.functional.cross_entropy(wide.flatten(0, 1), ids.flatten(), reduction="none").view(ids.shape)
    scored = noised.to(per.dtype)
    loss = (per * scored).sum() / scored.sum().clamp_min(1.0)
    with torch.no_grad():
        accuracy = ((logits.argmax(-1) == ids) & noised).sum() / noised.sum().clamp_min(1)
    return {"loss": loss, "token_accuracy": accuracy, "_x_t": x_t, "_logits": logits, "_previous": previous}


class Tess(Objective):
    pattern = FULL

    def __init__(self, source_length: int, target_length: int, schedule, k: float, self_conditioning: float):
        super().__init__()
        self.source_length, self.target_length, self.schedule = source_length, target_length, schedule
        self.k, self.self_conditioning = k, self_conditioning

    def loss(self, model, batch):
        ids = batch["ids"]
        B = ids.shape[0]
        t = torch.randint(1, self.schedule.steps + 1, (B, 1), device=ids.device).float().expand(B, self.target_length)
        noised = ed.target_positions(B, self.source_length, self.target_length, ids.device)
        out = tess_loss(model, ids, ed.with_clean_source(t, self.source_length), noised, self.schedule, self.k, self.self_conditioning)
        return {k: v for k, v in out.items() if not k.startswith("_")}


def build(config, ctx):
    source_length, target_length = ed.target_length_of(ctx, "tess")
    return Tess(source_length, target_length, ed.schedule_of(ctx), float(config.simplex_value), float(config.self_conditioning))
