"""iTransformer: Inverted Transformers Are Effective for Time Series Forecasting (Liu et al., 2023).

What the paper does: a time-series Transformer usually makes one token per time step out of all
variates measured at that step. iTransformer inverts the dimensions: the whole lookback series of
one variate becomes one token (embedded by a linear map ``Linear(lookback, d_model)``), the
encoder's self-attention runs *across variates* (so its attention map is a map of multivariate
correlations), the feed-forward network and layer norm act on each variate token separately,
and a linear projection ``Linear(d_model, horizon)`` turns each token into its variate's
forecast. There is no positional encoding: the order of the variates carries no meaning, and the
model is equivariant to permutations of the variates.

What this implementation does:

- tokenizer ``variate``: a window (B, lookback, V) -> V tokens of ``lookback`` features each,
  optionally normalised per window and variate (zero mean, unit std; undone on the forecast), as
  the authors' code does (``use_norm``, taken from Non-stationary Transformers);
- the inverted embedding and the projection are the shared ``forecast`` head of the baseline
  plugin (``Linear(lookback, d_model)`` and ``Linear(d_model, horizon)`` per token);
- backbone ``itransformer``: an encoder over variate tokens built from the registry's
  ``transformer`` backbone with ``rope: false`` (no positions) and the ``full`` attention pattern;
- objective: the baseline ``mse`` (whole forecast window).

What it simplifies: the baseline encoder is pre-norm with RMSNorm and a SwiGLU feed-forward
network (the Llama layout) instead of the paper's post-norm LayerNorm + GELU vanilla encoder;
the paper's optional extra tokens for covariates (timestamps) are not used; the scale is toy
(d_model 32-64, 1-2 layers on statsmodels' macrodata instead of 512-wide models on ECL/Traffic).
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import Fraction, PositiveFloat, PositiveInt

PAPER = records.Paper(
    title="iTransformer: Inverted Transformers Are Effective for Time Series Forecasting",
    year=2023,
    arxiv="2310.06625",
    url="https://github.com/thuml/iTransformer",
)

_P = "genloom.plugins.itransformer"


@dataclass
class VariateTokenizerConfig:
    """One token per variate: its whole lookback series (the inverted view)."""

    instance_norm: bool = True
    """Normalise each variate of each window by its own lookback mean/std and undo it on the forecast."""
    eps: PositiveFloat = 1e-5
    """Added to the variance before the square root (instance_norm only)."""

    def __post_init__(self):
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")


@dataclass
class ITransformerConfig:
    """Transformer encoder whose tokens are variates: attention across variates, no positions."""

    d_model: PositiveInt = 64
    """Width of a variate token; published to later components as ``ctx.d_model``."""
    n_layers: PositiveInt = 2
    """Encoder layers."""
    n_heads: PositiveInt = 4
    """Attention heads (d_model must be divisible by it)."""
    ffn_hidden: PositiveInt | None = None
    """Hidden width of the per-token feed-forward network (None: the encoder's default)."""
    dropout: Fraction = 0.1
    """Dropout inside the encoder layers."""
    encoder: str = "transformer"
    """Registry backbone used as the encoder; it must accept ``rope: false`` and the ``full`` pattern."""

    def __post_init__(self):
        if self.d_model < 1 or self.n_layers < 1 or self.n_heads < 1:
            raise ValueError("d_model, n_layers and n_heads must be at least 1")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def bind(self, ctx) -> None:
        ctx.set("d_model", self.d_model)


@hookimpl
def genloom_tokenizers():
    return [
        records.tokenizer(
            "variate",
            f"{_P}.tokenizer:build",
            VariateTokenizerConfig,
            "Inverted series tokens: each variate's whole lookback window is one token (optional per-window normalisation).",
            PAPER,
        )
    ]


@hookimpl
def genloom_backbones():
    return [
        records.backbone(
            "itransformer",
            f"{_P}.model:build",
            ITransformerConfig,
            "iTransformer encoder: self-attention across variate tokens, per-token FFN, no positional encoding.",
            PAPER,
        )
    ]
