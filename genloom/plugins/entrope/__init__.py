"""EntroPE: entropy-guided dynamic patching for time-series forecasting (2025).

What the paper does: fixed-length patches (PatchTST) cut a series at arbitrary positions. EntroPE
places patch boundaries where the series is hard to predict. An *Entropy-based Dynamic Patcher*
(EDP) runs a small causal model, pretrained on the quantised training series, that gives the
distribution of the next value; where its conditional entropy ``H_t = -sum_k p(x_t = k | x_<t)
log p(x_t = k | x_<t)`` exceeds a threshold a new patch starts at t. An *Adaptive Patch Encoder*
(APE) turns each variable-length patch into one fixed-size vector (pooling over the patch's steps,
then cross-attention from that pooled query to the steps), and a global transformer models the
patch sequence before a linear forecasting head.

What this implementation does:

- tokenizer ``entropy-patch``: each variate of a window is its own sequence (channel
  independence), normalised by its lookback mean/std (undone on the forecast); values are
  quantised into ``n_bins`` uniform bins on ``[-clip, clip]``. ``fit`` trains the entropy model
  (bin embedding, a GRU, logits over the bins; next-bin cross-entropy) on every lookback window of
  the training split only, then freezes it; the threshold is the ``threshold_quantile`` of the
  training entropies unless ``threshold`` is given. Tokens are ``(B*V, L, 2)``: the value and the
  boundary flag ``b_t = [t = 0 or H_t > threshold]``; the patches are the runs from one boundary to
  the next, so they tile the window without gaps or overlaps. The entropy model and threshold are
  saved with the run;
- backbone ``entrope``: APE (a step embedding of value and position; per patch a masked max-pool
  as the query, one cross-attention over the patch's own steps, a feed-forward layer: a
  ``d_model`` vector whatever the patch length), a global transformer over the patch vectors (padding
  masked), and a linear head from the last patch's and the mean patch vector to the horizon;
- head ``patch-values`` and objective ``mse`` (shared).

What it simplifies: the entropy model is a one-layer GRU (the paper's is a small causal
transformer) trained for a fixed number of steps inside ``fit``; the threshold is global (no
per-window relative criterion); the forecasting head pools the patch vectors instead of
flattening a fixed number of them; toy scale.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import Fraction, PositiveFloat, PositiveInt, Probability, Seed

PAPER = records.Paper(
    title="EntroPE: Entropy-Guided Dynamic Patch Encoder for Time Series Forecasting",
    year=2025,
    arxiv="2509.26157",
    url="https://github.com/Sachithx/EntroPE",
)

_P = "genloom.plugins.entrope"


@dataclass
class EntropyPatchConfig:
    """Channel-independent value tokens with boundary flags where the entropy model's next-step entropy exceeds the threshold."""

    n_bins: PositiveInt = 32
    """Quantisation bins of the entropy model's vocabulary."""
    clip: PositiveFloat = 3.0
    """Normalised values are clipped to [-clip, clip] before quantisation."""
    hidden: PositiveInt = 32
    """Width of the entropy model (bin embedding and GRU)."""
    fit_steps: PositiveInt = 200
    """Adam steps that train the entropy model on the training windows."""
    fit_lr: PositiveFloat = 3e-3
    """Learning rate of those steps."""
    threshold: PositiveFloat | None = None
    """Entropy (nats) above which a patch starts (None: the threshold_quantile of the training entropies)."""
    threshold_quantile: Probability = 0.75
    """Quantile of the training windows' entropies used as the threshold when threshold is None."""
    instance_norm: bool = True
    """Normalise each variate of each window by its own lookback mean/std (undone on the forecast)."""
    eps: PositiveFloat = 1e-5
    """Added to the variance before the square root (instance_norm only)."""
    horizon: PositiveInt | None = None
    """Forecast steps (None: the data set's horizon)."""
    lookback: PositiveInt | None = None
    """Window length (None: the data set's lookback)."""
    seed: Seed = 0
    """Seed of the entropy model's initialisation and training batches."""

    def bind(self, ctx) -> None:
        if self.horizon is None:
            self.horizon = ctx.horizon
        if self.lookback is None:
            self.lookback = ctx.lookback
        ctx.set("token_features", 2)
        ctx.set("token_outputs", self.horizon)


@dataclass
class EntropeConfig:
    """Adaptive patch encoder (pooling + cross-attention per patch) and a global transformer over the patches."""

    d_model: PositiveInt = 32
    """Width of the step, patch and global tokens."""
    n_heads: PositiveInt = 2
    """Heads of the global transformer (d_model must be divisible by it)."""
    n_layers: PositiveInt = 1
    """Global transformer layers."""
    ffn_hidden: PositiveInt = 64
    """Hidden width of the feed-forward layers."""
    lookback: PositiveInt | None = None
    """Window length (None: the data set's); bounds the step and patch positions."""
    horizon: PositiveInt | None = None
    """Forecast steps (None: the data set's)."""
    dropout: Fraction = 0.0
    """Dropout in the global transformer."""

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")

    def bind(self, ctx) -> None:
        if self.lookback is None:
            self.lookback = ctx.lookback
        if self.horizon is None:
            self.horizon = ctx.horizon
        ctx.set("d_model", self.d_model)


@hookimpl
def genloom_tokenizers():
    return [records.tokenizer("entropy-patch", f"{_P}.tokenizer:build", EntropyPatchConfig,
                              "EntroPE's dynamic patcher: boundaries where a frozen entropy model's next-step entropy exceeds a threshold.", PAPER)]


@hookimpl
def genloom_backbones():
    return [records.backbone("entrope", f"{_P}.model:build", EntropeConfig,
                             "EntroPE: adaptive patch encoder (pooling + cross-attention per patch) and a global transformer.", PAPER)]
