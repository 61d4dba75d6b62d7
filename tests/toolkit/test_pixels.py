"""Raster-order pixel autoregression: quantisation round trip, raster order with channels
innermost, the loss and bits per dimension, and a clear error for a too-small vocabulary."""

import math

import pytest
import torch

from genloom.core.errors import ConfigError
from genloom.testing import tiny_model
from genloom.toolkit.pixels import dequantise, quantise, raster_ids
from genloom.toolkit.pixels_config import RasterPixelsConfig

BASE = {
    "data": {"name": "digits"},
    "tokenizer": {"name": "ids", "vocab_size": 17},
    "head": {"name": "lm"},
    "backbone": {"name": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2},
    "objective": {"name": "raster-pixels", "levels": 17},
}


def test_quantise_is_raster_order_and_round_trips():
    levels = 5
    ids = torch.randint(0, levels, (2, 3 * 4 * 2))  # H=3, W=4, C=2
    images = dequantise(ids, channels=2, height=3, width=4, levels=levels)
    assert images.shape == (2, 2, 3, 4) and images.min() >= -1 and images.max() <= 1
    assert torch.equal(quantise(images, levels), ids)
    # raster order: row 0 first, pixels left to right, channels innermost
    assert quantise(images, levels)[0, :2].tolist() == [int(images[0, 0, 0, 0].add(1).mul(2).round()), int(images[0, 1, 0, 0].add(1).mul(2).round())]
    start = raster_ids(images, levels, start_id=levels)
    assert start[:, 0].eq(levels).all() and torch.equal(start[:, 1:], ids)


def test_objective_scores_every_pixel_in_bits_per_dimension():
    built = tiny_model(base=BASE, seed=0)
    assert built.ctx.get("raster_width") == 8 and built.ctx.get("image_start_id") == 17
    images = torch.rand(2, 1, 8, 8) * 2 - 1
    out = built.model.loss({"image": images})
    assert out["_tokens"].item() == 2 * 64
    assert math.isclose(out["bits_per_dim"].item(), out["loss"].item() / math.log(2), rel_tol=1e-6)
    logits = built.model(raster_ids(images, 17, 17)[:, :-1])
    assert logits.shape[:2] == (2, 64)


def test_levels_beyond_the_vocabulary_are_refused():
    with pytest.raises(ConfigError, match="objective.levels"):
        tiny_model(base={**BASE, "objective": {"name": "raster-pixels", "levels": 40}})
    with pytest.raises(ValueError, match="levels"):
        RasterPixelsConfig(levels=1)
