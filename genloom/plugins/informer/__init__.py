"""Informer: Beyond Efficient Transformer for Long Sequence Time-Series Forecasting (Zhou et al., 2021).

What the paper does: three changes make a Transformer encoder-decoder cheap enough for long inputs
and outputs.

- *ProbSparse self-attention*: most queries attend almost uniformly ("lazy" queries), so only the
  u = c * ln L queries with the largest sparsity measurement
  ``M(q_i, K) = max_j (q_i k_j / sqrt d) - mean_j (q_i k_j / sqrt d)`` get full attention (M is
  estimated from c * ln L sampled keys); the others output the mean of the values. Cost
  O(L ln L) instead of O(L^2).
- *Self-attention distilling*: between encoder layers ``Conv1d -> ELU -> MaxPool(stride 2)``
  halves the sequence, so the encoder's stack shrinks geometrically and focuses on dominant
  features.
- *Generative-style decoder*: the decoder reads the last ``label_len`` known steps followed by
  ``horizon`` zero placeholders (with their positions) and forecasts the whole horizon in one
  forward pass (masked ProbSparse self-attention, full cross-attention to the encoder).

What this implementation does:

- tokens: the toolkit's ``time-step`` tokenizer and the baseline ``forecast`` head
  (``Linear(V, d_model)`` value embedding in, ``Linear(d_model, V)`` out); objective ``mse``;
- backbone ``informer``: sinusoidal positions added to the embedded steps; ``encoder_layers``
  post-norm layers of multi-head ProbSparse self-attention + feed-forward, with a distilling layer
  between consecutive ones; ``decoder_layers`` layers of causal ProbSparse self-attention, full
  cross-attention and feed-forward over ``label_len + horizon`` tokens; the tokenizer keeps the
  last ``horizon`` as the forecast.

What it simplifies or chooses: no calendar (timestamp) embeddings and a linear value embedding
(the paper's is a kernel-3 convolution); lazy queries of the *causal* decoder self-attention get the
mean of the values they may see (the running mean; the authors' code uses the running sum); the
keys used to estimate M are sampled while training and all keys are used at evaluation, so a
trained model's forecasts are deterministic; the encoder stack is a single stack (the paper's
"distilling pyramid" of stacks on halved inputs is not built). Toy scale.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import Fraction, NonNegativeInt, PositiveFloat, PositiveInt
from genloom.toolkit.forecasting_config import EncoderDecoderForecasterConfig

PAPER = records.Paper(
    title="Informer: Beyond Efficient Transformer for Long Sequence Time-Series Forecasting",
    year=2021,
    arxiv="2012.07436",
    url="https://github.com/zhouhaoyi/Informer2020",
)

_P = "genloom.plugins.informer"


@dataclass
class InformerConfig(EncoderDecoderForecasterConfig):
    """ProbSparse-attention encoder (with distilling) and generative decoder over time-step tokens."""

    d_model: PositiveInt = 32
    """Model width; published to later components as ``ctx.d_model``."""
    n_heads: PositiveInt = 2
    """Attention heads (d_model must be divisible by it)."""
    encoder_layers: PositiveInt = 2
    """Encoder attention layers (a distilling layer sits between consecutive ones)."""
    decoder_layers: PositiveInt = 1
    """Decoder layers."""
    ffn_hidden: PositiveInt = 64
    """Hidden width of the feed-forward sub-layers."""
    factor: PositiveFloat = 5.0
    """c in u = min(L, ceil(c * ln L)): active queries, and keys sampled to estimate M."""
    distil: bool = True
    """Halve the sequence between encoder layers (self-attention distilling)."""
    label_len: NonNegativeInt | None = None
    """Known steps the decoder starts from (None: half the lookback)."""
    horizon: PositiveInt | None = None
    """Future steps the decoder adds (None: the data set's horizon)."""
    dropout: Fraction = 0.0
    """Dropout after the sub-layers."""


@hookimpl
def genloom_backbones():
    return [records.backbone("informer", f"{_P}.model:build", InformerConfig,
                             "Informer: ProbSparse self-attention, self-attention distilling, one-pass generative decoder.", PAPER)]
