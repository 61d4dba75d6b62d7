"""LaViDa's objective: image prefix + masked-diffusion answer, complementary masking.

Batch: ``ids`` (B, P + T) with ``prompt_mask`` marking the P pixel tokens (``data.batch``). The
pixels become the encoder's prefix embeddings; the answer (T tokens) appears in two views, the
first masking each answer token with probability t ~ U[mask_rate_min, mask_rate_max], the second
masking exactly the others. One pass over ``[prefix, view]`` for both views (batch 2B) under
:class:`~genloom.toolkit.canvas_cache.PromptIsolated`; the loss is the mean cross-entropy over the
masked answer tokens of both views, i.e. each answer token once.
"""

from __future__ import annotations

import torch

from genloom.core import kernels
from genloom.core.model import Objective
from genloom.plugins.lavida.encoder import PatchEncoder
from genloom.toolkit.blocks import masked_nll
from genloom.toolkit.canvas_cache import PromptIsolated, prompt_isolated
from genloom.toolkit.masking import apply_mask, complementary_masks


def prefixed_logits(model, prefix: torch.Tensor, answer_ids: torch.Tensor, *, state=None, pattern=None) -> torch.Tensor:
    """Logits of the answer positions after an embedding ``prefix`` (B, n, D) (one backbone pass)."""
    h = model.head.embed(answer_ids)
    with kernels.scope(getattr(model.ctx, "kernels", None)):
        if state is not None:
            out = model.backbone(h, pattern=pattern, state=state)
            return model.head(out)
        out = model.backbone(torch.cat([prefix.to(h.dtype), h], 1), pattern=pattern or prompt_isolated(prefix.shape[1]))
    return model.head(out[:, prefix.shape[1]:])


class LaViDaObjective(Objective):
    def __init__(self, config, *, mask_id: int, d_model: int, eos_id: int | None = None):
        super().__init__()
        self.config = config
        self.mask_id = int(mask_id)
        self.eos_id = eos_id
        self.encoder = PatchEncoder(config.image_side, config.patch, config.levels, d_model)
        self.pattern = PromptIsolated(prefix_length=self.encoder.n_patches)

    def split(self, batch):
        """(pixel tokens (B, P), answer ids (B, T)) from a ``data.batch`` dict or an image batch
        (``image`` in [-1, 1] and ``label``, e.g. the ``digits`` data set)."""
        if "image" in batch:
            from genloom.plugins.lavida.data import answer_ids

            levels = self.config.levels - 1
            pixels = ((batch["image"].flatten(1) + 1.0) * levels / 2).round().long().clamp(0, levels)
            eos = self.eos_id if self.eos_id is not None else self.mask_id
            answers = torch.tensor([answer_ids(int(y), eos) for y in batch["label"]], device=pixels.device)
            return pixels, answers
        ids, prompt = batch["ids"], batch["prompt_mask"]
        P = int(prompt[0].sum())
        return ids[:, :P], ids[:, P:]

    def views(self, answers: torch.Tensor, generator=None):
        c = self.config
        t = c.mask_rate_min + (c.mask_rate_max - c.mask_rate_min) * torch.rand(answers.shape[0], generator=generator, device=answers.device)
        first, second = complementary_masks(torch.ones_like(answers, dtype=torch.bool), t, generator=generator)
        masked = torch.cat([first, second], 0)
        return apply_mask(answers.repeat(2, 1), masked, self.mask_id), masked

    def loss(self, model, batch, *, generator=None):
        pixels, answers = self.split(batch)
        x_t, masked = self.views(answers, generator)
        prefix = self.encoder(pixels).repeat(2, 1, 1)
        logits = prefixed_logits(model, prefix, x_t, pattern=self.pattern)
        nll = masked_nll(logits, answers.repeat(2, 1), self.mask_id)
        count = torch.tensor(float(answers.numel()), device=answers.device)  # = masked.sum(): each answer token once
        nats = torch.where(masked, nll, torch.zeros_like(nll)).sum()
        return {"loss": nats / count, "_nats": nats.detach(), "_tokens": count}


def build(config, ctx) -> LaViDaObjective:
    d_model = ctx.get("d_model")
    if d_model is None:
        from genloom.core.errors import ConfigError

        raise ConfigError("the lavida objective needs a backbone that publishes its width (ctx.d_model)", path="objective")
    return LaViDaObjective(config, mask_id=ctx.mask_id, d_model=d_model, eos_id=ctx.get("eos_id"))
