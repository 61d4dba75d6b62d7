"""Autoformer: Decomposition Transformers with Auto-Correlation for long-term forecasting (Wu et al., 2021).

What the paper does: an encoder-decoder over time-step tokens with two new blocks.

- *Series decomposition* as an inner block: ``trend = AvgPool(Padding(X))`` (a moving average
  with the ends repeated), ``seasonal = X - trend``. Every sub-layer is followed by one, so the
  encoder keeps only the seasonal part and the decoder accumulates the trend it peels off.
- *Auto-Correlation* instead of self-attention: the period-based dependencies of queries and
  keys, ``R_QK(tau) = sum_t Q_t K_{t-tau}`` for every lag tau at once through the FFT
  (Wiener-Khinchin: ``R = IFFT(FFT(Q) * conj(FFT(K)))``); the ``k = c * ln L`` lags with the largest
  (head- and channel-averaged) correlation are kept, their correlations softmax-normalised, and
  the output is the *time-delay aggregation* ``sum_i w_i * Roll(V, tau_i)``: whole sub-series are
  aggregated instead of single points.
- The decoder input is the last ``label_len`` steps of the input's seasonal part followed by
  zeros, and its trend input the same steps' trend followed by the input's mean; the forecast is
  the decoder's seasonal output plus the accumulated trend.

What this implementation does:

- tokens: the toolkit's ``time-step`` tokenizer (one token per time step with its V values,
  normalised per window) and the baseline ``forecast`` head (``Linear(V, d_model)`` in,
  ``Linear(d_model, V)`` out), both from the registry; objective: the baseline ``mse``;
- backbone ``autoformer``: ``encoder_layers`` encoder layers (Auto-Correlation, decomposition,
  feed-forward, decomposition) and ``decoder_layers`` decoder layers (self Auto-Correlation,
  decomposition, cross Auto-Correlation with the encoder output, decomposition, feed-forward,
  decomposition; the three trends are projected and added to the running trend). It returns
  ``label_len + horizon`` tokens; the tokenizer keeps the last ``horizon`` as the forecast.

What it simplifies: the decomposition of the decoder's input happens after the linear value
embedding (a moving average commutes with a linear map, so this equals embedding the decomposed
series up to where the embedding's bias lands) and the trend is accumulated in the model width and
projected by the head's output layer (the paper projects each layer's trend to the output channels
with a kernel-3 convolution); no calendar (timestamp) embeddings; the value embedding is linear
(the paper's is a kernel-3 convolution); the top-k lags are chosen per sample (the authors' code
uses the batch average while training). Toy scale: lookback 16-32, d_model 32, one layer each.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import Fraction, NonNegativeInt, PositiveFloat, PositiveInt
from genloom.toolkit.forecasting_config import EncoderDecoderForecasterConfig

PAPER = records.Paper(
    title="Autoformer: Decomposition Transformers with Auto-Correlation for Long-Term Series Forecasting",
    year=2021,
    arxiv="2106.13008",
    url="https://github.com/thuml/Autoformer",
)

_P = "genloom.plugins.autoformer"


@dataclass
class AutoformerConfig(EncoderDecoderForecasterConfig):
    """Encoder-decoder with series decomposition blocks and Auto-Correlation over time-step tokens."""

    d_model: PositiveInt = 32
    """Model width; published to later components as ``ctx.d_model``."""
    n_heads: PositiveInt = 2
    """Auto-Correlation heads (d_model must be divisible by it)."""
    encoder_layers: PositiveInt = 1
    """Encoder layers."""
    decoder_layers: PositiveInt = 1
    """Decoder layers."""
    ffn_hidden: PositiveInt = 64
    """Hidden width of the feed-forward sub-layers."""
    moving_average: PositiveInt = 5
    """Kernel of the decomposition's moving average (odd; the paper uses 25 on long inputs)."""
    factor: PositiveFloat = 1.0
    """c in k = int(c * ln L): how many lags the time-delay aggregation keeps."""
    label_len: NonNegativeInt | None = None
    """Known steps the decoder starts from (None: half the lookback)."""
    horizon: PositiveInt | None = None
    """Future steps the decoder adds (None: the data set's horizon)."""
    dropout: Fraction = 0.0
    """Dropout after the sub-layers."""

    positive_fields = ("d_model", "n_heads", "encoder_layers", "decoder_layers", "ffn_hidden", "moving_average")

    def __post_init__(self):
        super().__post_init__()
        if self.moving_average % 2 == 0:
            raise ValueError(f"moving_average must be odd (a centred window), got {self.moving_average}")


@hookimpl
def genloom_backbones():
    return [records.backbone("autoformer", f"{_P}.model:build", AutoformerConfig,
                             "Autoformer: series-decomposition encoder-decoder with FFT Auto-Correlation and time-delay aggregation.", PAPER)]
