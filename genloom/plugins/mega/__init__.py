"""Mega: Moving Average Equipped Gated Attention (Ma et al., 2022).

What the paper does. Mega puts a position-aware local inductive bias in front of a single-head
gated attention: a *multi-dimensional damped exponential moving average* (EMA). Every channel x
is expanded to h dimensions by beta, each smoothed with its own damped EMA and projected back by
eta::

    u_t^(j) = beta_j x_t,   h_t^(j) = alpha_j u_t^(j) + (1 - alpha_j delta_j) h_{t-1}^(j),   y_t = sum_j eta_j h_t^(j)

(alpha, delta in (0, 1)). Being linear and time-invariant it is a convolution with the kernel
``K[k] = sum_j eta_j alpha_j (1 - alpha_j delta_j)^k beta_j``, computed by FFT for training. The
smoothed X' = silu(EMA(X) + omega x) drives shared queries and keys (Z = silu(X' W_z),
Q = kappa_q Z + mu_q, K = kappa_k Z + mu_k), values V = silu(X W_v) and single-head attention O;
a reset gate gamma = silu(X' W_gamma) and an update gate phi = sigmoid(X' W_phi) combine them:
H = silu(X' W_h + (gamma * O) U_h), Y = phi * H + (1 - phi) * X. Mega-chunk splits the sequence
into chunks of c tokens and attends only inside each chunk (linear cost), keeping the EMA over
the whole sequence.

What this implementation does. :mod:`.model` builds the Mega layer exactly in that layout, with a
pre-norm LayerNorm and a pre-norm FFN block after it. The EMA runs through the ``fft_conv`` op
with the kernel above (:meth:`.model.MultiHeadEMA.kernel`) for full sequences, and as the
recurrence through the ``linear_recurrence`` op (heads = channels, keys = the h expansion
dimensions, decay ``log(1 - alpha delta)``) for decoding, padding holes and rollback.
Attention is causal, over the whole sequence (``chunk_size: null``) or inside chunks of
``chunk_size`` tokens. The incremental state holds the EMA state (constant size) and a key/value
cache with positions, so a query at position p attends to cached keys of its own chunk.

What it simplifies. Softmax attention without Mega's relative-position bias (the EMA carries the
position information; a bias is easy to add); the key/value cache keeps finished chunks instead
of freeing them; no Laplace attention function; tiny widths.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records

PAPER = records.Paper(title="Mega: Moving Average Equipped Gated Attention", year=2022, arxiv="2209.10655")


@dataclass
class MegaConfig:
    """A stack of Mega blocks (EMA + single-head gated attention, then an FFN)."""

    d_model: int = 128
    """Model width; published to later components as ``ctx.d_model``."""
    n_layers: int = 2
    """Number of Mega blocks."""
    ema_dim: int = 8
    """EMA expansion h: damped EMAs per channel."""
    qk_dim: int = 64
    """Shared query/key width z."""
    value_dim: int = 128
    """Value width v (the paper uses 2 d_model)."""
    chunk_size: int | None = None
    """Mega-chunk: attend only inside chunks of this many tokens (None: the whole sequence)."""
    ffn_mult: int = 2
    """Feed-forward hidden width = ffn_mult x d_model."""
    norm_eps: float = 1e-5
    """LayerNorm epsilon."""

    def __post_init__(self):
        for name in ("d_model", "n_layers", "ema_dim", "qk_dim", "value_dim", "ffn_mult"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1 (or null for the whole sequence), got {self.chunk_size}")

    def bind(self, ctx):
        ctx.set("d_model", self.d_model)


@hookimpl
def genloom_backbones():
    return [
        records.backbone(
            "mega",
            "genloom.plugins.mega.model:build",
            MegaConfig,
            "Mega: multi-dimensional damped EMA (fft_conv / recurrence) + single-head gated attention, full or chunked.",
            PAPER,
        )
    ]
