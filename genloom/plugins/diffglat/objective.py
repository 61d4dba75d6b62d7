"""DiffGLAT's objective: modality-diffusion corruption, a glancing pass, glanced training.

For a batch of ``prompt | target`` sequences: step k ~ U{1..K} per sequence masks each target
token with probability k / K; the glancing pass predicts the masked tokens (argmax, no gradient);
``d`` = number of masked positions predicted wrongly; ``n = ceil(ratio * d)`` of the masked positions
(uniformly at random) get their reference token back; the training pass is scored on the positions
still masked (mean cross-entropy per masked token).
"""

from __future__ import annotations

import torch

from genloom.core.model import Objective
from genloom.core.pattern import FULL
from genloom.toolkit.blocks import masked_nll


def glance(x_t: torch.Tensor, x_0: torch.Tensor, masked: torch.Tensor, prediction: torch.Tensor, ratio: float, *, generator=None):
    """GLAT's glancing sampling: reveal ``ceil(ratio * d)`` random masked positions, d = Hamming distance
    between ``prediction`` and ``x_0`` on the masked positions. Returns (glanced ids, still masked, d, n)."""
    wrong = masked & (prediction != x_0)
    d = wrong.sum(-1)
    n = torch.ceil(ratio * d.double()).long()
    u = torch.rand(masked.shape, generator=generator, device=masked.device)
    u = torch.where(masked, u, torch.full_like(u, 2.0))
    rank = u.argsort(-1).argsort(-1)
    reveal = masked & (rank < n.reshape(-1, 1))
    return torch.where(reveal, x_0, x_t), masked & ~reveal, d, n


class DiffGLATObjective(Objective):
    pattern = FULL

    def __init__(self, config, *, mask_id: int):
        super().__init__()
        self.config = config
        self.mask_id = int(mask_id)

    def corrupt(self, x_0: torch.Tensor, target: torch.Tensor, k: torch.Tensor, generator=None):
        """The modality process at step k (B,): each target token masked with probability k / K."""
        rate = (k.double() / self.config.steps).reshape(-1, 1)
        masked = target & (torch.rand(x_0.shape, generator=generator, device=x_0.device, dtype=torch.float64) < rate)
        return torch.where(masked, torch.full_like(x_0, self.mask_id), x_0), masked

    def loss(self, model, batch, *, generator=None):
        x_0 = batch["ids"]
        if "prompt_mask" in batch:
            target = ~batch["prompt_mask"].bool()
        else:  # token windows: ``mask`` (B, L - 1) marks real targets ids[1:]; padding is never a target
            target = torch.ones_like(x_0, dtype=torch.bool)
            mask = batch.get("mask")
            if mask is not None and mask.shape[1] == x_0.shape[1] - 1:
                target[:, 1:] = mask.bool()
        K = self.config.steps
        k = torch.randint(1, K + 1, (x_0.shape[0],), generator=generator, device=x_0.device)
        x_t, masked = self.corrupt(x_0, target, k, generator)
        with torch.no_grad():
            logits = model(x_t, pattern=FULL).clone()
            logits[..., self.mask_id] = float("-inf")
            prediction = logits.argmax(-1)
        glanced, still, d, n = glance(x_t, x_0, masked, prediction, self.config.glance_ratio, generator=generator)
        nll = masked_nll(model(glanced, pattern=FULL), x_0, self.mask_id)
        count = still.sum().clamp_min(1).float()
        nats = torch.where(still, nll, torch.zeros_like(nll)).sum()
        return {"loss": nats / count, "hamming": d.float().mean(), "glanced": n.float().mean(), "_nats": nats.detach(), "_tokens": count.detach()}


def build(config, ctx) -> DiffGLATObjective:
    return DiffGLATObjective(config, mask_id=ctx.mask_id)
