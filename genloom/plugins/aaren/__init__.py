"""Attention as an RNN (Aaren) (Feng et al., 2024).

What the paper does. Softmax attention of one query over a growing set of keys can be updated
token by token like an RNN: keep the running maximum ``m`` of the scores, the denominator
``u = sum_i exp(s_i - m)`` and the numerator ``w = sum_i exp(s_i - m) v_i``; a new token rescales
them to the new maximum and adds its own term, and ``o = w / u``. Because combining two such
triples is associative::

    (m_A, u_A, w_A) + (m_B, u_B, w_B) = (m, u_A e^(m_A - m) + u_B e^(m_B - m), w_A e^(m_A - m) + w_B e^(m_B - m)),  m = max(m_A, m_B)

all prefix outputs (the "many-to-many RNN" output of causal attention) come from a parallel
prefix scan. Aaren makes the query a *learned, input-independent* vector per layer, so every
prefix output is the attention of that query over the tokens so far: trained in parallel by the
scan, run as an RNN with O(1) state per new token. Aaren layers are stacked like Transformer
blocks (with feed-forward layers and residuals).

What this implementation does. :mod:`.scan` is the op ``softmax_prefix_scan`` this plugin
registers (kernels hook): ``reference`` is the step-by-step RNN update, ``scan`` the parallel
Hillis-Steele prefix scan with the operator above; both take an initial triple and return the
final one. :mod:`.model` builds multi-head Aaren layers (learned query per head, keys and values
projected from the input, scores ``q . k / sqrt(d)``) in pre-norm residual blocks with an FFN. The
state holds the per-head triple per layer (:class:`~genloom.toolkit.recurrent.RecurrentState`);
padded steps get the score -inf, the scan's identity.

What it simplifies. Tiny widths and a language-model config (the paper evaluates on
reinforcement learning, event forecasting, time-series classification and forecasting; the
backbone is modality-agnostic). No custom GPU kernel (the PyTorch scan materialises (B, H, L, V)
per round).
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records

PAPER = records.Paper(title="Attention as an RNN", year=2024, arxiv="2405.13956")



@dataclass
class AarenConfig:
    """A stack of Aaren blocks (attention with a learned query, computed as a prefix scan, + FFN)."""

    d_model: int = 128
    """Model width; published to later components as ``ctx.d_model``."""
    n_layers: int = 2
    """Number of Aaren blocks."""
    n_heads: int = 4
    """Heads; each has its own learned query."""
    ffn_mult: int = 2
    """Feed-forward hidden width = ffn_mult x d_model."""
    norm_eps: float = 1e-5
    """LayerNorm epsilon."""

    def __post_init__(self):
        for name in ("d_model", "n_layers", "n_heads", "ffn_mult"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")

    def bind(self, ctx):
        ctx.set("d_model", self.d_model)


@hookimpl
def genloom_backbones():
    return [
        records.backbone(
            "aaren",
            "genloom.plugins.aaren.model:build",
            AarenConfig,
            "Aaren: attention with a learned query as a parallel prefix scan / RNN; O(1) state per token.",
            PAPER,
        )
    ]


@hookimpl
def genloom_kernels():
    return [
        records.kernel("softmax_prefix_scan", "reference", "genloom.plugins.aaren.scan:make_reference", summary="Attention of one query over every prefix, step by step (Aaren's RNN update).", paper=PAPER, priority=0),
        records.kernel("softmax_prefix_scan", "scan", "genloom.plugins.aaren.scan:make_scan", summary="Attention of one query over every prefix by a parallel prefix scan of (max, denominator, numerator).", paper=PAPER, priority=10),
    ]
