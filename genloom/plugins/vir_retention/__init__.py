"""ViR: Vision Retention Networks (Hatamizadeh et al., 2023).

What the paper does. ViR brings RetNet's *retention* to a general vision backbone: image patches
are read in raster order as a causal sequence, and each layer replaces self-attention by
multi-scale retention, which has a parallel form for training and an equivalent recurrent form
for inference. For head h with decay ``gamma_h`` and relative rotation angles ``theta``::

    parallel:   Retention(X) = ((Q K^T) * D) V,   D[n, m] = gamma^(n - m) if n >= m else 0
    recurrent:  S_n = gamma S_{n-1} + K_n^T V_n,   Retention(X_n) = Q_n S_n
    chunkwise:  parallel inside chunks, the state S carried across chunks

where Q and K are rotated by ``n theta`` (xPos-style relative position), heads use different
decays (``gamma = 1 - 2^-5 ... 1 - 2^-9``: multi-scale), each head's output is group-normalised,
gated by ``swish(X W_G)`` and projected (MSR), and blocks alternate retention and a feed-forward
network with pre-norm residuals. The dual form gives transformer-like parallel training and O(1)
memory per generated token, which ViR uses for high-resolution images and autoregressive use.

What this implementation does. :mod:`.model` builds that block. Retention runs through the
``linear_recurrence`` kernel op: pairs of query/key dimensions become complex numbers and the
decay becomes complex, ``g = log(gamma_h) + i theta_j`` per pair, so ``q_n exp(G_n - G_m) conj(k_m)``
is exactly the rotated, decayed product of RetNet (real part taken). The op's ``reference``
(recurrent), ``parallel`` (masked decay matrix) and ``chunkwise`` backends are RetNet's three
forms, and the test compares them, plus :func:`.model.parallel_retention`, the paper's parallel
formula written out in real arithmetic (rotation matrices and the D matrix), as an independent
check. The incremental state holds the (K/2, V) complex state per head and layer
(:class:`~genloom.toolkit.recurrent.RecurrentState`; rollback replays the last advance).

What it simplifies. No image-specific stem here: the backbone mixes any (B, L, D) sequence, so
the runnable config is a byte language model; a vision pipeline pairs it with an image tokenizer
(patches in raster order) and keeps the causal pattern. No class token or classification head,
no hybrid retention/attention layers, tiny widths; the value dimension is ``value_factor`` x the
key dimension as in RetNet; LayerNorm pre-norm instead of RetNet's subln/DeepNorm.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records

PAPER = records.Paper(title="ViR: Towards Efficient Vision Retention Backbones", year=2023, arxiv="2310.19731")


@dataclass
class ViRConfig:
    """A stack of retention blocks (multi-scale retention + FFN, pre-norm residuals)."""

    d_model: int = 128
    """Model width; published to later components as ``ctx.d_model``."""
    n_layers: int = 2
    """Number of retention blocks."""
    n_heads: int = 4
    """Retention heads; head h decays with gamma_h = 1 - exp(linspace(log 1/32, log 1/512))[h]."""
    value_factor: int = 2
    """Value width per head = value_factor x key width (RetNet uses 2)."""
    ffn_mult: int = 2
    """Feed-forward hidden width = ffn_mult x d_model."""
    rotation: bool = True
    """Relative rotation of queries and keys (xPos-style theta); False: decay only."""
    norm_eps: float = 1e-5
    """LayerNorm / GroupNorm epsilon."""

    def __post_init__(self):
        for name in ("d_model", "n_layers", "n_heads", "value_factor", "ffn_mult"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"the key width per head d_model / n_heads = {self.d_model // self.n_heads} must be even (dimensions are rotated in pairs)")

    def bind(self, ctx):
        ctx.set("d_model", self.d_model)


@hookimpl
def genloom_backbones():
    return [
        records.backbone(
            "vir-retention",
            "genloom.plugins.vir_retention.model:build",
            ViRConfig,
            "Multi-scale retention (parallel == recurrent == chunkwise) via the linear_recurrence op; O(1) state per token.",
            PAPER,
        )
    ]
