"""FutureFill: Fast Generation from Convolutional Sequence Models (Agarwal et al., 2024).

What the paper does. In a model built on long convolutions, the output at step t sums the filter
against every earlier input, so naive autoregressive generation costs O(t) per token and O(L^2)
overall (or a full FFT per token). FutureFill instead keeps a buffer of the *future* contributions
of past tokens: once a block of generated tokens is complete, one FFT convolution of that block
with the filter adds its contribution to every later output at once; a new token then only needs
the direct sum over the tokens since the last block. Generation stays exact, and the convolution
work drops from quadratic to O(L^{3/2} sqrt(log L)) with blocks of ~sqrt(L log L) tokens (the
paper's epoched algorithm), or to O(L log^2 L) with its divide-and-conquer variant. Its cache
holds only the future buffer for the tokens being generated.

What this implementation does. The decoding path of the ``fft_conv`` kernel op,
:class:`genloom.kernels.fft_conv.ConvStream`, is FutureFill's epoched algorithm (future buffer,
flush of each full block by one FFT, direct sum over the pending block; it counts its
multiply-adds). This plugin gives a convolutional backbone, ``futurefill``, whose incremental state
decodes through one stream per batch row and layer (:mod:`.model`): blocks of gated long
convolutions with explicit per-channel filters, trained through ``fft_conv``. ``decoding:
naive`` keeps the whole history pending (the O(t)-per-token baseline) for comparison; both give
the same tokens. Rollback restores each stream's snapshot from before the advance and refeeds the
kept inputs; streams are per row so sequences of different lengths (padding, accepted drafts)
stay exact.

What it simplifies. Only the epoched algorithm (not the O(L log^2 L) divide-and-conquer one);
the block size is a config value rather than derived from a known generation length; one stream
per batch row (a Python loop over rows when decoding); tiny widths.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records

PAPER = records.Paper(title="FutureFill: Fast Generation from Convolutional Sequence Models", year=2024, arxiv="2410.03766")

DECODING = ("futurefill", "naive")


@dataclass
class FutureFillConfig:
    """Gated long-convolution blocks decoded by FutureFill."""

    d_model: int = 128
    """Model width; published to later components as ``ctx.d_model``."""
    n_layers: int = 2
    """Number of convolution blocks."""
    filter_length: int = 1024
    """Length of each channel's explicit filter (lags beyond it are zero)."""
    block_size: int = 32
    """FutureFill block: tokens between two FFT flushes of the future buffer."""
    decoding: str = "futurefill"
    """'futurefill' (epoched future buffer) or 'naive' (direct sum over the whole history)."""
    ffn_mult: int = 2
    """Feed-forward hidden width = ffn_mult x d_model."""
    norm_eps: float = 1e-5
    """LayerNorm epsilon."""

    def __post_init__(self):
        for name in ("d_model", "n_layers", "filter_length", "block_size", "ffn_mult"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.decoding not in DECODING:
            raise ValueError(f"decoding must be one of {', '.join(DECODING)}, got '{self.decoding}'")

    def bind(self, ctx):
        ctx.set("d_model", self.d_model)


@hookimpl
def genloom_backbones():
    return [
        records.backbone(
            "futurefill",
            "genloom.plugins.futurefill.model:build",
            FutureFillConfig,
            "Gated long-convolution backbone decoded by FutureFill (future buffer + blockwise FFT), exact and sub-quadratic.",
            PAPER,
        )
    ]
