"""GPHT: a generative pretrained hierarchical transformer for forecasting (Liu et al., KDD 2024).

What the paper does: one model for every horizon. A series is channel-independent (each variate
its own sequence), normalised per window and cut into patches; a hierarchical transformer reads
the patch tokens at several scales -- each stage pools the tokens coarser, runs causal
self-attention, and its prediction is subtracted from what the next stage sees, so later stages
model the residual of earlier ones (iterative residual learning) -- and the forecast is the sum
of the stages' predictions of the *next patch*. Training is auto-regressive next-patch prediction
(pretraining on a mixture of data sets, then fine-tuning); forecasting rolls out next patches, so
no horizon-specific head is needed.

What this implementation does:

- tokenizer ``patch`` and objective ``next-patch`` (shared, from ``genloom.toolkit.forecasting_patches``):
  channel-independent patches of the window normalised by its own statistics; teacher-forced
  next-patch MSE over the lookback and the target; forecasts roll out one patch at a time over a
  sliding lookback window (re-normalised at each step), so a ``2P`` forecast equals two chained
  ``P``-step forecasts exactly; head ``patch-values`` (the backbone embeds and projects itself);
- backbone ``gpht``: ``stages`` (pooling factors, coarse to fine). Stage s embeds its input
  patches (``Linear(P, d)``), max-pools each block of ``r_s`` complete patches into one token, adds
  a learned block position, runs ``layers_per_stage`` causal transformer layers, and projects each
  block token to the ``r_s`` patches of the *next* block (``Linear(d, r_s P)``): its prediction of
  patch t uses patches before t's block only. Stage s+1 reads the residual ``x - sum of the earlier
  stages' predictions``; the output is the sum of every stage's prediction of the next patch.

What it simplifies: no mixed-data-set pretraining (one data set, trained from scratch); the
coarse stages predict a whole next block from the previous complete blocks (a causal reading of
the paper's pooled stages; the paper upsamples each stage's output); toy scale (two stages,
d_model 32).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from genloom.core import hookimpl, records
from genloom.core.constraints import Fraction, PositiveInt

PAPER = records.Paper(
    title="Generative Pretrained Hierarchical Transformer for Time Series Forecasting",
    year=2024,
    arxiv="2402.16516",
    url="https://github.com/icantnamemyself/GPHT",
)

_P = "genloom.plugins.gpht"


@dataclass
class GphtConfig:
    """Hierarchical causal transformer stages over patch tokens; each stage predicts the residual of the earlier ones."""

    stages: list[PositiveInt] = field(default_factory=lambda: [2, 1])
    """Pooling factor of each stage, coarse to fine (patches per stage token); the last is usually 1."""
    d_model: PositiveInt = 32
    """Width of every stage's tokens."""
    n_heads: PositiveInt = 2
    """Attention heads (d_model must be divisible by it)."""
    layers_per_stage: PositiveInt = 1
    """Causal transformer layers in each stage."""
    ffn_hidden: PositiveInt = 64
    """Hidden width of the feed-forward sub-layers."""
    max_patches: PositiveInt = 64
    """Longest patch sequence (learned positions); the lookback plus target patches must fit."""
    patch_len: PositiveInt | None = None
    """Values per patch (None: the patch tokenizer's)."""
    dropout: Fraction = 0.0
    """Dropout inside the transformer layers."""

    def __post_init__(self):
        if not self.stages:
            raise ValueError("stages must name at least one pooling factor")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")

    def bind(self, ctx) -> None:
        if self.patch_len is None:
            self.patch_len = ctx.patch_len
        ctx.set("d_model", self.d_model)


@hookimpl
def genloom_backbones():
    return [records.backbone("gpht", f"{_P}.model:build", GphtConfig,
                             "GPHT: hierarchical causal transformer stages over patches, each predicting the residual of the earlier ones.", PAPER)]
