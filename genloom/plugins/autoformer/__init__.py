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
- backbone ``autoformer``: the embedded lookback passes a kernel-3 circular convolution (the
  encoder's token embedding; the decoder's seasonal input has its own), then ``encoder_layers``
  encoder layers (Auto-Correlation, decomposition, feed-forward, decomposition) and
  ``decoder_layers`` decoder layers (self Auto-Correlation, decomposition, cross Auto-Correlation
  with the encoder output, decomposition, feed-forward, decomposition; the sum of the three trends
  is projected by a kernel-3 circular convolution and added to the running trend). Each sample
  ranks its own top-k lags (the paper's equation); ``shared_training_lags`` uses, while training,
  the top-k of the batch-mean correlation for the whole batch (each sample weighting them by its
  own correlations), the speed-up of the authors' code and of neuralforecast. It returns
  ``label_len + horizon`` tokens; the tokenizer keeps the last ``horizon`` as the forecast.

What it simplifies: the backbone sees the head's linear embedding ``Linear(V, d_model)`` of the
values, so the paper's token embedding (a kernel-3 circular convolution from V to d_model) is
that linear map followed by a kernel-3 circular convolution in the model width (the same family
of maps, V <= d_model, plus the head's bias); the decoder's input is decomposed after that linear
map (a moving average commutes with it; the bias lands in the trend). The trend is accumulated in
the model width and the head's output layer ``Linear(d_model, V)`` maps seasonal + trend to the
values, so each layer's trend projection (paper: kernel-3 convolution from d_model to V) is a
kernel-3 convolution in the model width followed by that shared linear map, and the initial trend
(paper: the raw values' trend, added as it is) passes through the head's two linear maps, which
must learn to carry it. No calendar (timestamp) embeddings. Toy scale: lookback 16-36, d_model 32,
one layer each.
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
    shared_training_lags: bool = False
    """While training, aggregate every sample of a batch at the top lags of the batch-mean correlation
    (the authors' code's speed-up); False: each sample ranks its own lags, as the paper's equation does."""

    positive_fields = ("d_model", "n_heads", "encoder_layers", "decoder_layers", "ffn_hidden", "moving_average")

    def __post_init__(self):
        super().__post_init__()
        if self.moving_average % 2 == 0:
            raise ValueError(f"moving_average must be odd (a centred window), got {self.moving_average}")


@hookimpl
def genloom_backbones():
    return [records.backbone("autoformer", f"{_P}.model:build", AutoformerConfig,
                             "Autoformer: series-decomposition encoder-decoder with FFT Auto-Correlation and time-delay aggregation.", PAPER)]
