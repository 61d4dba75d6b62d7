"""Autoformer's blocks: series decomposition, Auto-Correlation with time-delay aggregation, the encoder-decoder.

One forward pass, step by step (h: the embedded lookback, (B, L, d)):

1. ``seasonal, trend = decompose(h)``; the decoder's inputs are the last ``label_len`` steps of
   each, followed by ``horizon`` zeros (seasonal) or the mean of h over time (trend); the seasonal
   input and h each pass their own kernel-3 circular convolution (the token embeddings);
2. the encoder maps the embedded h through Auto-Correlation and feed-forward sub-layers, each followed by a
   decomposition that keeps the seasonal part;
3. the decoder runs self Auto-Correlation, cross Auto-Correlation with the encoder output and a
   feed-forward sub-layer, each followed by a decomposition; the trends peeled off are projected
   by a kernel-3 circular convolution and added to the running trend;
4. the output is seasonal + trend over ``label_len + horizon`` steps.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from genloom.core.model import Backbone
from genloom.core.pattern import FULL, AttentionPattern
from genloom.plugins.autoformer import AutoformerConfig


# ---------------------------------------------------------------------------------------------
# Series decomposition
# ---------------------------------------------------------------------------------------------

def moving_average(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Centred moving average over time (dim 1) of (B, L, D), the ends repeated so the length is kept."""
    front = x[:, :1].expand(-1, (kernel - 1) // 2, -1)
    end = x[:, -1:].expand(-1, kernel - 1 - (kernel - 1) // 2, -1)
    padded = torch.cat([front, x, end], dim=1)
    return F.avg_pool1d(padded.transpose(1, 2), kernel_size=kernel, stride=1).transpose(1, 2)


class SeriesDecomposition(nn.Module):
    """``trend = AvgPool(Padding(x))``, ``seasonal = x - trend``."""

    def __init__(self, kernel: int):
        super().__init__()
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        trend = moving_average(x, self.kernel)
        return x - trend, trend


# ---------------------------------------------------------------------------------------------
# Auto-Correlation
# ---------------------------------------------------------------------------------------------

def autocorrelation(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """R(tau) = sum_t q[(t + tau) mod L] k[t] for every lag at once: IFFT(FFT(q) * conj(FFT(k))) over dim 1 (L)."""
    length = queries.shape[1]
    spectrum = torch.fft.rfft(queries, dim=1) * torch.conj(torch.fft.rfft(keys, dim=1))
    return torch.fft.irfft(spectrum, n=length, dim=1)


def direct_autocorrelation(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The O(L^2) reference of :func:`autocorrelation`: one rolled dot product per lag."""
    return torch.stack([(torch.roll(queries, -tau, dims=1) * keys).sum(1) for tau in range(queries.shape[1])], dim=1)


def time_delay_aggregation(values: torch.Tensor, correlation: torch.Tensor, top_k: int, shared_lags: bool = False) -> torch.Tensor:
    """``sum_i softmax(R)_i * Roll(V, tau_i)`` over the ``top_k`` lags of the mean correlation.

    values, correlation: (B, L, H, E); the correlation is averaged over heads and channels to rank
    the lags; ``Roll(V, tau)[t] = V[(t + tau) mod L]``. Each sample ranks its own lags, or, with
    ``shared_lags`` (training), the whole batch uses the top lags of the batch-mean correlation,
    each sample weighting them by the softmax of its own correlations at those lags.
    """
    mean_corr = correlation.mean(dim=(2, 3))  # (B, L)
    if shared_lags:
        lags = torch.topk(mean_corr.mean(0), top_k, dim=-1).indices.expand(mean_corr.shape[0], -1)  # (B, k)
        weights = torch.gather(mean_corr, 1, lags)
    else:
        weights, lags = torch.topk(mean_corr, top_k, dim=-1)  # (B, k)
    weights = torch.softmax(weights, dim=-1)
    length = values.shape[1]
    index = (torch.arange(length, device=values.device)[None, None, :] + lags[:, :, None]) % length  # (B, k, L)
    gathered = torch.gather(values[:, None].expand(-1, top_k, -1, -1, -1), 2,
                            index[..., None, None].expand(-1, -1, -1, *values.shape[2:]))  # (B, k, L, H, E)
    return (weights[:, :, None, None, None] * gathered).sum(1)


class AutoCorrelation(nn.Module):
    """Multi-head Auto-Correlation: project, correlate by FFT, aggregate the top-k delayed values, project."""

    def __init__(self, d_model: int, n_heads: int, factor: float = 1.0, shared_training_lags: bool = False):
        super().__init__()
        self.n_heads, self.factor, self.shared_training_lags = n_heads, factor, shared_training_lags
        self.query, self.key, self.value, self.out = (nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        batch, length, d = queries.shape
        q = self.query(queries).view(batch, length, self.n_heads, -1)
        k, v = self.key(keys), self.value(values)
        source = keys.shape[1]
        if length > source:  # zero-fill keys/values up to the query length (as the paper's code does)
            pad = torch.zeros(batch, length - source, d, dtype=k.dtype, device=k.device)
            k, v = torch.cat([k, pad], 1), torch.cat([v, pad], 1)
        else:
            k, v = k[:, :length], v[:, :length]
        k, v = k.reshape(batch, length, self.n_heads, -1), v.reshape(batch, length, self.n_heads, -1)
        top_k = max(1, min(length, int(self.factor * math.log(length)))) if length > 1 else 1
        out = time_delay_aggregation(v, autocorrelation(q, k), top_k, shared_lags=self.training and self.shared_training_lags)
        return self.out(out.reshape(batch, length, d))


class CircularConv(nn.Module):
    """Kernel-3 convolution over time with circular padding, no bias: ``y_t = A x_{t-1} + B x_t + C x_{t+1}`` (indices mod L).

    The paper's token embedding and its per-layer trend projection. (B, L, d_in) -> (B, L, d_out).
    """

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.conv = nn.Conv1d(d_in, d_out, kernel_size=3, padding=1, padding_mode="circular", bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# Encoder and decoder
# ---------------------------------------------------------------------------------------------

class SeasonalLayerNorm(nn.Module):
    """LayerNorm, then the mean over time removed (the seasonal part carries no level)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x):
        x = self.norm(x)
        return x - x.mean(dim=1, keepdim=True)


def _ffn(d_model: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_model, hidden, bias=False), nn.GELU(), nn.Linear(hidden, d_model, bias=False))


class EncoderLayer(nn.Module):
    def __init__(self, config: AutoformerConfig):
        super().__init__()
        self.correlation = AutoCorrelation(config.d_model, config.n_heads, config.factor, config.shared_training_lags)
        self.ffn = _ffn(config.d_model, config.ffn_hidden)
        self.decompose = SeriesDecomposition(config.moving_average)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        x, _ = self.decompose(x + self.dropout(self.correlation(x, x, x)))
        x, _ = self.decompose(x + self.dropout(self.ffn(x)))
        return x


class DecoderLayer(nn.Module):
    def __init__(self, config: AutoformerConfig):
        super().__init__()
        self.self_correlation = AutoCorrelation(config.d_model, config.n_heads, config.factor, config.shared_training_lags)
        self.cross_correlation = AutoCorrelation(config.d_model, config.n_heads, config.factor, config.shared_training_lags)
        self.ffn = _ffn(config.d_model, config.ffn_hidden)
        self.decompose = SeriesDecomposition(config.moving_average)
        self.trend_projection = CircularConv(config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, memory):
        x, trend1 = self.decompose(x + self.dropout(self.self_correlation(x, x, x)))
        x, trend2 = self.decompose(x + self.dropout(self.cross_correlation(x, memory, memory)))
        x, trend3 = self.decompose(x + self.dropout(self.ffn(x)))
        return x, self.trend_projection(trend1 + trend2 + trend3)


class Autoformer(Backbone):
    """Embedded lookback (B, L, d) -> seasonal + trend over ``label_len + horizon`` steps (B, label_len + horizon, d)."""

    patterns = frozenset({"full"})

    def __init__(self, config: AutoformerConfig):
        super().__init__()
        self.config = config
        self.d_model = config.d_model
        self.label_len, self.horizon = config.label_len, config.horizon
        self.decompose = SeriesDecomposition(config.moving_average)
        self.encoder_embedding = CircularConv(config.d_model, config.d_model)
        self.decoder_embedding = CircularConv(config.d_model, config.d_model)
        self.encoder = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.encoder_norm = SeasonalLayerNorm(config.d_model)
        self.decoder = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))
        self.decoder_norm = SeasonalLayerNorm(config.d_model)

    def decoder_inputs(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Seasonal input: last label_len seasonal steps + zeros; trend input: their trend + the mean of h."""
        seasonal, trend = self.decompose(h)
        batch, _, d = h.shape
        start = h.shape[1] - self.label_len
        zeros = torch.zeros(batch, self.horizon, d, dtype=h.dtype, device=h.device)
        mean = h.mean(dim=1, keepdim=True).expand(-1, self.horizon, -1)
        return torch.cat([seasonal[:, start:], zeros], 1), torch.cat([trend[:, start:], mean], 1)

    def forward(self, h: torch.Tensor, *, pattern: AttentionPattern = FULL, state=None, valid=None) -> torch.Tensor:
        if state is not None:
            raise ValueError("autoformer forecasts the whole horizon in one pass; it has no incremental state")
        if pattern.kind != "full":
            raise ValueError(f"autoformer reads the whole lookback (pattern 'full'), got '{pattern.kind}'")
        if h.shape[1] < self.label_len:
            raise ValueError(f"autoformer needs at least label_len={self.label_len} input steps, got {h.shape[1]}")
        seasonal, trend = self.decoder_inputs(h)
        seasonal = self.decoder_embedding(seasonal)
        memory = self.encoder_embedding(h)
        for layer in self.encoder:
            memory = layer(memory)
        memory = self.encoder_norm(memory)
        for layer in self.decoder:
            seasonal, residual_trend = layer(seasonal, memory)
            trend = trend + residual_trend
        return self.decoder_norm(seasonal) + trend

    def init_state(self, batch_size: int, capacity: int = 256, device=None, dtype=None):
        raise NotImplementedError("autoformer forecasts the whole horizon in one pass; it has no incremental state")


def build(config: AutoformerConfig, ctx) -> Autoformer:
    if config.horizon is None or config.label_len is None:
        config.bind(ctx)
    ctx.set("d_model", config.d_model)
    return Autoformer(config)
