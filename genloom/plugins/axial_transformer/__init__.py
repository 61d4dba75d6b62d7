"""Axial Transformer: axial attention in multidimensional transformers (Ho et al., 2019).

What the paper does. An autoregressive image model whose self-attention runs along one axis at a
time: a layer attends inside each row, or inside each column, so an N-pixel image costs
O(N sqrt N) attention entries per layer instead of O(N^2). To stay exactly autoregressive in
raster order without giving up the full receptive field, the model has two parts. The *outer
decoder* shifts the image down by one row and runs unmasked row attention and masked column
attention, so every position of row r receives a context summarising all rows above r. The
*inner decoder* adds that context to the input shifted right by one pixel and runs masked row
attention, so pixel (r, c) also sees the earlier pixels of its own row. Sampling is
semi-parallel: the outer decoder runs once per row, the inner decoder once per pixel.

What this implementation does. :mod:`.model` holds the backbone (``axial-transformer``) over a
raster sequence ``width`` tokens a row, with learned row and column embeddings and pre-norm
residual attention and feed-forward blocks. Each axial attention runs either on rows/columns
reshaped into batch rows (``attention: reshape``, the O(N sqrt N) form) or on the flat sequence
under the core's ``AxialPattern`` masks (``attention: mask``; the two agree to rounding). The
next-token shift of the ``raster-pixels`` objective (a start token first; registered here,
:mod:`genloom.toolkit.pixels`) plays the inner decoder's shift-right: the backbone's output at
position t depends on inputs at positions <= t, so the prediction of pixel p depends on pixels
< p only. Decoding keeps the inputs, the outer context of every row begun (computed once, when the
row's first token arrives) and a KV cache of the inner layers read under the masked-row pattern.

What it simplifies. The outer stack is recomputed over all earlier rows when a new row starts
(exact, O(N sqrt N) per row) instead of caching its column keys; no channel-wise (third-axis)
decoder: channels are interleaved into a raster row; tiny widths; no dropout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genloom.core import hookimpl, records
from genloom.core.constraints import PositiveFloat, PositiveInt

PAPER = records.Paper(title="Axial Attention in Multidimensional Transformers", year=2019, arxiv="1912.12180")
_P = "genloom.plugins.axial_transformer"


@dataclass
class AxialTransformerConfig:
    """An outer (row-context) and an inner (masked-row) stack of axial attention layers."""

    d_model: PositiveInt = 64
    """Model width; published to later components as ``ctx.d_model``."""
    n_heads: PositiveInt = 4
    """Attention heads per axial attention (must divide d_model)."""
    width: PositiveInt | None = None
    """Tokens per raster row (None: the ``raster_width`` the objective publishes from the data)."""
    outer_layers: PositiveInt = 2
    """Outer decoder layers (unmasked row + masked column attention, each with a feed-forward)."""
    inner_layers: PositiveInt = 2
    """Inner decoder layers (masked row attention with a feed-forward)."""
    ffn_mult: PositiveInt = 4
    """Feed-forward hidden width = ffn_mult x d_model."""
    max_rows: PositiveInt = 64
    """Rows the learned row embedding covers (longest sequence = max_rows x width)."""
    attention: Literal["reshape", "mask"] = "reshape"
    """``reshape``: rows/columns as batch rows (O(N sqrt N)); ``mask``: the flat sequence under AxialPattern masks."""
    norm_eps: PositiveFloat = 1e-5
    """LayerNorm epsilon."""

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads must divide d_model, got d_model={self.d_model}, n_heads={self.n_heads}")

    def bind(self, ctx):
        if self.width is None:
            width = ctx.get("raster_width")
            if width is None:
                from genloom.core.errors import ConfigError

                raise ConfigError("width is not set and nothing publishes raster_width: set backbone.width or use the raster-pixels objective on image data", path="backbone.width")
            self.width = int(width)
        ctx.set("d_model", self.d_model)


@hookimpl
def genloom_backbones():
    return [
        records.backbone(
            "axial-transformer",
            f"{_P}.model:build",
            AxialTransformerConfig,
            "Axial Transformer: outer row-context stack (row + masked column attention) and inner masked-row stack, raster-order causal.",
            PAPER,
        )
    ]


@hookimpl
def genloom_objectives():
    from genloom.toolkit.pixels_config import RasterPixelsConfig

    return [
        records.objective(
            "raster-pixels",
            "genloom.toolkit.pixels:build_raster_pixels",
            RasterPixelsConfig,
            "Autoregressive pixels in raster order (quantised intensities, a start token), with bits per dimension.",
        )
    ]
