"""The DiffuSeq objective: partial noising and the target-only loss.

Batch: ``SourceTargetPairs`` samples (``ids`` = ``[source block | target, eos, padding]``). Every
target position (its padding included: the block has a fixed length) is noised and scored; every
source position is clean and unscored.
"""

from __future__ import annotations

import torch

from genloom.core.errors import ConfigError
from genloom.core.model import Objective
from genloom.core.pattern import FULL
from genloom.toolkit.embedding_diffusion import EmbeddingDiffusionHead, partial_noise, round_to_tokens, rounding_loss, schedule_of, target_length_of


def diffusion_head(model, who: str) -> EmbeddingDiffusionHead:
    if not isinstance(model.head, EmbeddingDiffusionHead):
        raise ConfigError(f"{who} diffuses token embeddings: it needs the 'embedding-diffusion' head, got {type(model.head).__name__}", path="head")
    return model.head


def target_positions(batch_size: int, source_length: int, target_length: int, device) -> torch.Tensor:
    """(B, S + T) True at the target block."""
    noised = torch.zeros(batch_size, source_length + target_length, dtype=torch.bool, device=device)
    noised[:, source_length:] = True
    return noised


def embedding_diffusion_loss(model, ids, t, noised, schedule, generator=None) -> dict:
    """Squared error of the z_0 prediction + the two rounding terms, over ``noised`` positions only.

    ``t`` broadcasts to (B, S + T) (per sequence (B, 1), or per position); ``z_t`` is the partial
    noising of ``z_0 = Emb(ids)`` at ``t``. Returns the loss and the rounding accuracy of the
    prediction; ``_z_t`` and ``_prediction`` are kept for tests.
    """
    head = model.head
    z0 = head.vectors(ids)
    noise = torch.randn(z0.shape, generator=generator, dtype=z0.dtype).to(z0.device)
    z_t = partial_noise(z0, t, schedule, noise, noised)
    prediction = head.denoise(model, z_t, t)
    scored = noised.to(z0.dtype)
    mse = (((prediction - z0) ** 2).mean(-1) * scored).sum() / scored.sum().clamp_min(1.0)
    loss = mse + rounding_loss(prediction, head.weight, ids, noised) + rounding_loss(z0, head.weight, ids, noised)
    with torch.no_grad():
        correct = (round_to_tokens(prediction, head.weight) == ids) & noised
        accuracy = correct.sum() / noised.sum().clamp_min(1)
    return {"loss": loss, "mse": mse.detach(), "token_accuracy": accuracy, "_z_t": z_t, "_prediction": prediction}


class DiffuSeq(Objective):
    pattern = FULL

    def __init__(self, source_length: int, target_length: int, schedule):
        super().__init__()
        self.source_length, self.target_length, self.schedule = source_length, target_length, schedule

    def loss(self, model, batch):
        diffusion_head(model, "diffuseq")
        ids = batch["ids"]
        B = ids.shape[0]
        t = torch.randint(1, self.schedule.steps + 1, (B, 1), device=ids.device).float()  # one t per sequence
        out = embedding_diffusion_loss(model, ids, t, target_positions(B, self.source_length, self.target_length, ids.device), self.schedule)
        return {k: v for k, v in out.items() if not k.startswith("_")}


def build(config, ctx):
    source_length, target_length = target_length_of(ctx, "diffuseq")
    return DiffuSeq(source_length, target_length, schedule_of(ctx))
