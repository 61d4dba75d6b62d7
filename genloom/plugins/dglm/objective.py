"""The DGLM objective: reconstruction through the soft prompt, and the proposal's denoising loss.

Batch: token windows ``ids`` (B, L + 1). ``prefix = ids[:, :P]``, ``continuation = ids[:, P:]``.

1. ``z = encode(continuation)`` (gradient reaches the encoder through the reconstruction only);
2. ``z_noisy = q_sample(z, t)`` with ``t ~ U[0, decoder_noise * T]`` (the decoder learns to read
   imperfect proposals);
3. reconstruction: the decoder reads ``[soft(z_noisy) | ids[:, :-1]]`` and is scored on the
   continuation's tokens (the prefix is given, as at generation);
4. diffusion: the denoiser's ``z_0`` error from ``z_t`` at a uniform ``t``, conditioned on the
   prefix's pooled encoder features, ``z`` detached (no collapse of the target through this loss).

``loss = reconstruction + diffusion_weight * diffusion``.
"""

from __future__ import annotations

import torch

from genloom.core.errors import ConfigError
from genloom.core.model import Objective
from genloom.core.pattern import CAUSAL
from genloom.toolkit.embedding_diffusion import q_sample

from .model import dglm_backbone, run_decoder


def dglm_losses(model, ids: torch.Tensor, prefix_length: int, decoder_noise: float, generator: torch.Generator | None = None, mask: torch.Tensor | None = None) -> dict:
    """Both losses of a batch of windows; ``mask`` (B, L) marks real targets ``ids[:, 1:]`` (a padded tail)."""
    backbone = dglm_backbone(model, "the dglm objective")
    P = prefix_length
    if ids.shape[1] - P < 1:
        raise ConfigError(f"windows of {ids.shape[1]} tokens leave no continuation after prefix_length={P}", path="objective.prefix_length")
    prefix, continuation = ids[:, :P], ids[:, P:]
    z = backbone.encode(continuation)
    t_max = decoder_noise * backbone.schedule.steps
    t = torch.rand(z.shape[:1], generator=generator, dtype=torch.float64).to(z.device) * t_max
    z_noisy = q_sample(z, t, backbone.schedule, torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device))
    h, _ = backbone.decoder_inputs(z_noisy, model.head.embed(ids[:, :-1]))
    logits = run_decoder(model, h)
    k = backbone.prompt_vectors
    scored = logits[:, k + P - 1 :]  # outputs that predict ids[:, P:]
    reconstruction = model.head.loss(scored, continuation, mask[:, P - 1 :] if mask is not None else None)
    diffusion = backbone.diffusion_loss(z.detach(), backbone.prefix_features(prefix), generator)
    return {"reconstruction": reconstruction, "diffusion": diffusion, "_z": z}


class DglmObjective(Objective):
    pattern = CAUSAL

    def __init__(self, prefix_length: int, decoder_noise: float, diffusion_weight: float):
        super().__init__()
        self.prefix_length, self.decoder_noise, self.diffusion_weight = prefix_length, decoder_noise, diffusion_weight

    def loss(self, model, batch):
        out = dglm_losses(model, batch["ids"], self.prefix_length, self.decoder_noise, mask=batch.get("mask"))
        loss = out["reconstruction"] + self.diffusion_weight * out["diffusion"]
        return {"loss": loss, "reconstruction": out["reconstruction"].detach(), "diffusion": out["diffusion"].detach()}


def build(config, ctx):
    return DglmObjective(config.prefix_length, float(config.decoder_noise), float(config.diffusion_weight))
