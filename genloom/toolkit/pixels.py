"""Autoregressive pixels in raster order: the shared objective of the image backbones.

An image (C, H, W) in [-1, 1] becomes ``H * W * C`` tokens, intensities quantised to ``levels``
values, rows top to bottom, pixels left to right, channels innermost, so a raster row of the
sequence is ``W * C`` tokens wide (published as ``raster_width``). A start token comes first;
the model reads ``[start, x_0 .. x_{N-2}]`` and predicts ``x_0 .. x_{N-1}``: the prediction of
pixel p depends on pixels before p only when the backbone is causal. Reports bits per dimension
(the mean negative log2-likelihood of one pixel value).

A batch is ``{"image": (B, C, H, W), ...}`` (the image data sets) or ``{"ids": (B, N + 1)}``
(the start token and the pixel tokens, as :func:`raster_ids` makes them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from genloom.core.errors import ConfigError
from genloom.core.model import Objective
from genloom.core.pattern import CAUSAL


def quantise(images: torch.Tensor, levels: int) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> (B, H * W * C) tokens in 0 .. levels - 1, raster order."""
    top = levels - 1
    ids = ((images + 1.0) * top / 2).round().long().clamp(0, top)
    return ids.permute(0, 2, 3, 1).flatten(1)


def dequantise(ids: torch.Tensor, channels: int, height: int, width: int, levels: int) -> torch.Tensor:
    """The inverse of :func:`quantise` on tokens: (B, H * W * C) -> (B, C, H, W) in [-1, 1]."""
    values = ids.float() * 2 / (levels - 1) - 1.0
    return values.view(-1, height, width, channels).permute(0, 3, 1, 2)


def raster_ids(images: torch.Tensor, levels: int, start_id: int) -> torch.Tensor:
    """(B, N + 1): the start token, then the quantised pixels."""
    pixels = quantise(images, levels)
    return torch.cat([torch.full_like(pixels[:, :1], start_id), pixels], 1)


class RasterPixels(Objective):
    """Next-pixel cross-entropy in raster order (causal pattern), with bits per dimension."""

    pattern = CAUSAL

    def __init__(self, levels: int, start_id: int):
        super().__init__()
        self.levels, self.start_id = int(levels), int(start_id)

    def ids(self, batch) -> torch.Tensor:
        if "image" in batch:
            return raster_ids(batch["image"], self.levels, self.start_id)
        return batch["ids"]

    def loss(self, model, batch):
        ids = self.ids(batch)
        logits = model(ids[:, :-1], pattern=self.pattern)
        targets = ids[:, 1:]
        nats = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum")
        count = torch.tensor(float(targets.numel()), device=nats.device)
        loss = nats / count
        return {"loss": loss, "bits_per_dim": loss.detach() / math.log(2), "_nats": nats.detach(), "_tokens": count}


def build_raster_pixels(config, ctx) -> RasterPixels:
    start = ctx.get("image_start_id")
    if start is None:  # built without bind: the start token is the last id
        start = ctx.get("vocab_size") - 1
    if start < config.levels:
        raise ConfigError(
            f"the tokenizer has {start} ids before the start token but levels is {config.levels}: "
            f"use a tokenizer with at least {config.levels} ids (e.g. {{name: ids, vocab_size: {config.levels}}})",
            path="objective.levels",
        )
    return RasterPixels(config.levels, start)
