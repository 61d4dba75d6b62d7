"""GateLoop: Fully Data-Controlled Linear Recurrence for Sequence Modeling (Katsch, 2023).

What the paper does. GateLoop generalises S4, S5, LRU and RetNet by making the state transition
itself a function of the input: per head, with a *data-controlled complex* diagonal transition
``a_n = f(x_n)`` (a magnitude in (0, 1) for forgetting and a phase for rotation)::

    h_n = diag(a_n) h_{n-1} + k_n^T v_n,        y_n = Re(q_n h_n)

It computes this in three equal modes: the O(l) recurrent mode (generation), an O(l log l)
parallel mode by an associative scan over the pairs (a_n, k_n^T v_n) with the operator
``(A1, B1) . (A2, B2) = (A1 A2, A2 B1 + B2)``, and an O(l^2) *surrogate attention* mode
``y = ((Q K^T) * M) V`` whose mask ``M[n, m] = prod_{m < j <= n} a_j`` is a data-controlled
complex cumulative product: relative-position information that attention learns from the data.

What this implementation does. :mod:`.model`: per head, q, k, v and the transition's log
magnitude ``log sigmoid(W_a x + b)`` and phase ``W_theta x`` per key channel are linear functions
of the input; ``g = log |a| + i phase`` goes to the ``linear_recurrence`` op, whose ``reference``
(recurrent mode), ``parallel`` (surrogate attention: the masked decay matrix) and ``chunkwise``
backends serve it; :func:`.scan.associative_scan_gateloop` is the paper's parallel mode
(Hillis-Steele inclusive scan, log2 L steps), selectable with ``mode: associative-scan``. The
output is group-normalised per head, gated by ``silu(W_g x)`` and projected, with pre-norm
residual blocks and an FFN (the paper's block layout). The state is the (K, V) complex matrix per
head and layer (:class:`~genloom.toolkit.recurrent.RecurrentState`).

What it simplifies. Tiny widths; the transition bias is initialised so |a| starts near 0.9-0.999
(slow forgetting), a choice of ours; no custom scan kernel (the op's chunkwise form, or the
PyTorch associative scan, which materialises (B, H, L, K, V)); no claim about the paper's
language-modelling numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records

PAPER = records.Paper(title="GateLoop: Fully Data-Controlled Linear Recurrence for Sequence Modeling", year=2023, arxiv="2311.01927")

MODES = ("op", "associative-scan")


@dataclass
class GateLoopConfig:
    """A stack of GateLoop blocks (data-controlled complex linear recurrence + FFN, pre-norm)."""

    d_model: int = 128
    """Model width; published to later components as ``ctx.d_model``."""
    n_layers: int = 2
    """Number of GateLoop blocks."""
    n_heads: int = 4
    """Heads; each has a (key, value) = (d_model / n_heads)^2 complex state."""
    ffn_mult: int = 2
    """Feed-forward hidden width = ffn_mult x d_model."""
    mode: str = "op"
    """Full-sequence form: 'op' (the linear_recurrence kernel op: recurrent, surrogate attention or
    chunkwise backend) or 'associative-scan' (the paper's parallel scan). Decoding is recurrent."""
    norm_eps: float = 1e-5
    """LayerNorm / GroupNorm epsilon."""

    def __post_init__(self):
        for name in ("d_model", "n_layers", "n_heads", "ffn_mult"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got '{self.mode}'")

    def bind(self, ctx):
        ctx.set("d_model", self.d_model)


@hookimpl
def genloom_backbones():
    return [
        records.backbone(
            "gateloop",
            "genloom.plugins.gateloop.model:build",
            GateLoopConfig,
            "GateLoop: data-controlled complex linear recurrence (recurrent == associative scan == surrogate attention).",
            PAPER,
        )
    ]
