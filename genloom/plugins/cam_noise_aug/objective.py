"""The CAM noise-augmentation objective.

Batch: token windows (``ids`` (B, L + 1)). The continuous sequence is ``x = vectors(ids)``; the
inputs ``x[:, :-1]`` are read at a noise level ``sigma ~ U[0, max_noise]`` per sequence
(``x + sigma eps``, the level embedded and added), the targets ``x[:, 1:]`` are clean, and the loss
is the diffusion head's loss of the targets given the causal backbone's outputs.
``plain_continuous_ar_loss`` is the same model trained without augmentation (for the test that
``max_noise = 0`` equals it).
"""

from __future__ import annotations

import torch

from genloom.core import kernels
from genloom.core.model import Objective
from genloom.core.pattern import CAUSAL

from .head import cam_head


def backbone_outputs(model, inputs: torch.Tensor) -> torch.Tensor:
    with kernels.scope(getattr(model.ctx, "kernels", None)):
        return model.backbone(inputs, pattern=CAUSAL)


def noise_augmented_loss(model, ids: torch.Tensor, max_noise: float, generator=None, diffusion_generator=None) -> dict:
    head = cam_head(model, "cam-noise-aug")
    x = head.vectors(ids)
    inputs, targets = x[:, :-1], x[:, 1:]
    B, L = inputs.shape[:2]
    sigma = torch.rand((B, 1), generator=generator, dtype=x.dtype).to(x.device) * max_noise
    noisy = inputs + sigma[..., None] * torch.randn(inputs.shape, generator=generator, dtype=x.dtype).to(x.device)
    h = backbone_outputs(model, head.inputs(noisy, sigma.expand(B, L)))
    loss = head.diffusion_loss(h, targets, diffusion_generator)
    return {"loss": loss, "noise_level": sigma.mean().detach(), "_inputs": noisy, "_targets": targets}


def plain_continuous_ar_loss(model, ids: torch.Tensor, diffusion_generator=None) -> torch.Tensor:
    """Continuous AR training without augmentation: clean inputs, no level conditioning."""
    head = cam_head(model, "continuous AR")
    x = head.vectors(ids)
    return head.diffusion_loss(backbone_outputs(model, head.in_proj(x[:, :-1])), x[:, 1:], diffusion_generator)


class CamNoiseAug(Objective):
    pattern = CAUSAL

    def __init__(self, max_noise: float):
        super().__init__()
        self.max_noise = max_noise

    def loss(self, model, batch):
        out = noise_augmented_loss(model, batch["ids"], self.max_noise)
        return {k: v for k, v in out.items() if not k.startswith("_")}


def build(config, ctx):
    return CamNoiseAug(float(config.max_noise))
