"""URPE: Universal RPE-based attention (Luo et al., 2022, "Your Transformer May Not be as Powerful
as You Expect").

What the paper does. Relative positional encodings (RPE) enter attention as a bias inside the
softmax, softmax(Q K^T / sqrt(d) + B) V. The paper proves that RPE transformers are not universal
approximators of sequence-to-sequence functions: the softmax always produces a row-stochastic
matrix, so for example identical tokens at different positions can never be told apart. URPE
attention multiplies the attention probabilities element-wise by a learnable Toeplitz matrix C
(C_ij depends only on i - j) *after* the softmax:

    Attn(X) = (softmax(Q K^T / sqrt(d) + B) * C) V,

which satisfies the paper's sufficient conditions for universality at the cost of one extra
parameter per head and relative distance. With C = 1 it is standard RPE attention.

What this implementation does. :mod:`.attention` holds the ``urpe_attention`` kernel op (a
``reference`` backend on the core's masked scores: any attention pattern, positions, padding and
cached keys). :mod:`.model` is the ``urpe`` backbone: a pre-norm transformer with no absolute
positions whose attention carries per-head Toeplitz tables b (RPE bias, initialised to 0) and C
(initialised to 1, so training starts from RPE attention), indexed by the distance q - kv clipped
to ``max_distance`` (a Shaw-style clipped RPE). ``universal: false`` freezes C at 1: plain RPE
attention, the control. Decoding uses the core KV cache; distances come from its positions.

What it simplifies. A clipped learned table for the RPE instead of the paper's per-architecture
choices (T5 buckets, Graphormer spatial encodings); C shares the RPE's clipping; one backend only
(no fused kernel); tiny widths.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import PositiveFloat, PositiveInt

PAPER = records.Paper(title="Your Transformer May Not be as Powerful as You Expect", year=2022, arxiv="2205.13401")
_P = "genloom.plugins.urpe"


@dataclass
class UrpeConfig:
    """A pre-norm transformer with URPE attention (relative positions only)."""

    d_model: PositiveInt = 64
    """Model width; published to later components as ``ctx.d_model``."""
    n_layers: PositiveInt = 2
    """Transformer blocks."""
    n_heads: PositiveInt = 4
    """Attention heads (must divide d_model); each has its own b and C tables."""
    max_distance: PositiveInt = 64
    """Relative distances are clipped to [-max_distance, max_distance] (2 max_distance + 1 table entries)."""
    universal: bool = True
    """True: learnable C multiplies the probabilities (URPE); False: C = 1 (plain RPE attention)."""
    ffn_mult: PositiveInt = 4
    """Feed-forward hidden width = ffn_mult x d_model."""
    norm_eps: PositiveFloat = 1e-5
    """LayerNorm epsilon."""

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads must divide d_model, got d_model={self.d_model}, n_heads={self.n_heads}")

    def bind(self, ctx):
        ctx.set("d_model", self.d_model)


@hookimpl
def genloom_backbones():
    return [
        records.backbone(
            "urpe",
            f"{_P}.model:build",
            UrpeConfig,
            "Transformer with URPE attention: (softmax(QK^T/sqrt d + b) * C) V, learnable Toeplitz b and C, no absolute positions.",
            PAPER,
        )
    ]


@hookimpl
def genloom_kernels():
    return [
        records.kernel(
            "urpe_attention",
            "reference",
            f"{_P}.attention:make_reference",
            summary="URPE attention: softmax(QK^T/sqrt d + b) times the Toeplitz C, then V; the definition.",
            paper=PAPER,
            priority=0,
        )
    ]
