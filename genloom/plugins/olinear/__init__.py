"""OLinear: a linear forecaster in an orthogonally transformed domain (Yue et al., 2025).

What the paper does: instead of encoding and decoding a series in the time domain (whose steps
are strongly correlated) or with a fixed basis (Fourier), OLinear uses *OrthoTrans*, a
data-adaptive orthogonal basis: the temporal Pearson correlation matrix of the training series'
windows, ``R = Q Lambda Q^T``, is diagonalised and every window x is mapped to ``Q^T x`` (the
decorrelated domain), separately for the lookback and for the horizon. A linear model then works
on variate tokens in that domain: a linear embedding, blocks of *NormLin* -- a linear layer across
the variate tokens whose weight matrix is normalised (it replaces multi-head self-attention at
about half the FLOPs) -- and a feed-forward network per token, a linear map to the horizon in the
transformed domain, and the inverse transform ``Q_out y'`` back to the time domain.

What this implementation does:

- tokenizer ``ortho``: per-window normalisation of each variate (undone on the forecast), then
  ``Q_in^T`` on each variate's lookback (one token per variate); ``decode`` maps the head's
  outputs with ``Q_out``. ``fit`` computes ``Q_in`` (lookback x lookback) and ``Q_out`` (horizon x
  horizon) from the *training split* only: the Pearson correlation over all training windows of
  all variates, eigendecomposed (``numpy.linalg.eigh``), eigenvectors by decreasing eigenvalue;
  they are saved with the run;
- backbone ``olinear``: ``n_layers`` blocks ``h = h + NormLin(LN(h))`` (mixing across variate
  tokens with ``W_norm``), ``h = h + FFN(LN(h))`` (per token), then a LayerNorm;
- head: the baseline ``forecast`` head (``Linear(lookback, d_model)`` in, ``Linear(d_model,
  horizon)`` out, both in the transformed domain); objective: the baseline ``mse``.

What it chooses or simplifies: the paper's exact NormLin normalisation was not confirmed here, so
``W_norm = softplus(W) / rowsum(softplus(W))`` (non-negative rows summing to 1, like an attention
map over variates; ``normalization: softmax`` is the alternative); NormLin mixes a fixed number
of variates, so a model is tied to its data set's V; no extra channel-wise temporal embedding
branch. Toy scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genloom.core import hookimpl, records

PAPER = records.Paper(
    title="OLinear: A Linear Model for Time Series Forecasting in Orthogonally Transformed Domain",
    year=2025,
    arxiv="2505.08550",
)

_P = "genloom.plugins.olinear"


@dataclass
class OrthoTokenizerConfig:
    """Variate tokens in the OrthoTrans domain: Q_in^T on the lookback, Q_out on the forecast."""

    instance_norm: bool = True
    """Normalise each variate of each window by its own lookback mean/std (undone on the forecast)."""
    eps: float = 1e-5
    """Added to the variance before the square root (instance_norm only)."""
    lookback: int | None = None
    """Window length transformed by Q_in (None: the data set's lookback)."""
    horizon: int | None = None
    """Forecast length transformed by Q_out (None: the data set's horizon)."""

    def __post_init__(self):
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        for name in ("lookback", "horizon"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")

    def bind(self, ctx) -> None:
        if self.lookback is None:
            self.lookback = ctx.lookback
        if self.horizon is None:
            self.horizon = ctx.horizon


@dataclass
class OLinearConfig:
    """NormLin blocks over variate tokens (mixing across variates) with per-token feed-forward networks."""

    d_model: int = 64
    """Width of a variate token; published to later components as ``ctx.d_model``."""
    n_layers: int = 1
    """NormLin blocks."""
    ffn_hidden: int = 128
    """Hidden width of the per-token feed-forward network."""
    num_variates: int | None = None
    """Variates NormLin mixes (None: the data set's)."""
    normalization: Literal["softplus", "softmax"] = "softplus"
    """How NormLin normalises its weight rows: softplus(W) / row sum, or a row softmax."""
    dropout: float = 0.0
    """Dropout after each block's sub-layers."""

    def __post_init__(self):
        for name in ("d_model", "n_layers", "ffn_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_variates is not None and self.num_variates < 1:
            raise ValueError(f"num_variates must be at least 1, got {self.num_variates}")
        if self.normalization not in ("softplus", "softmax"):
            raise ValueError(f"normalization must be 'softplus' or 'softmax', got '{self.normalization}'")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def bind(self, ctx) -> None:
        if self.num_variates is None:
            self.num_variates = ctx.num_variates
        ctx.set("d_model", self.d_model)


@hookimpl
def genloom_tokenizers():
    return [records.tokenizer("ortho", f"{_P}.tokenizer:build", OrthoTokenizerConfig,
                              "OrthoTrans: variate tokens in the eigenbasis of the training windows' temporal correlation.", PAPER)]


@hookimpl
def genloom_backbones():
    return [records.backbone("olinear", f"{_P}.model:build", OLinearConfig,
                             "OLinear: NormLin (normalised linear mixing across variates) + per-token FFN.", PAPER)]
