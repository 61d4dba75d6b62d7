"""Laughing Hyena Distillery: Extracting Compact Recurrences From Convolutions (Massaroli et al., 2023).

What the paper does. Long-convolution models such as Hyena train in parallel with FFTs, but
generating a token naively costs a pass over the whole history (or a cache of every activation),
like attention. The paper distils each trained long filter ``h`` (length L) into a low-order
*modal* state space model: a diagonal linear system of order d whose impulse response
``h~[t] = Re(sum_{n<d} R_n lambda_n^t)`` approximates ``h`` (rational interpolation / model-order
reduction: fit the poles lambda_n and residues R_n). The distilled layer is then a recurrence
``s_n(t) = lambda_n s_n(t-1) + u(t)``, ``y(t) = Re(sum_n R_n s_n(t))``: O(d) compute and memory per
token. The approximation error falls as the order d grows. It also ties filters across channels
into heads (MultiHyena), so fewer filters need distilling.

What this implementation does. :mod:`.model` is an order-2 Hyena operator
``y = W_o (x2 * (h conv (x1 * v)))`` with ``x1, x2, v`` projections of the input, in pre-norm
residual blocks with an FFN. ``filter: implicit`` is Hyena's implicit filter (an MLP of positional
features times a per-head exponential decay window), convolved through the ``fft_conv`` op; its
incremental state caches the history of convolution inputs (positions and validity per slot, so
ragged rows, rollback to any point and reordering work, like a KV cache). ``filter: modal`` is the
distilled filter: poles ``lambda = exp(-exp(log_decay) + i angle)`` and complex residues per head,
whose kernel is the impulse response (convolved through ``fft_conv`` in training) and whose
state is the order-d modal recurrence through ``linear_recurrence`` (O(1) per token).
:mod:`.distill` fits modal filters to implicit ones (residues by linear least squares for given
poles, poles refined by gradient steps through that least-squares solve) and turns an implicit
backbone into a modal one with the same weights elsewhere (:func:`.distill.distill_backbone`).

What it simplifies. No short convolutions in the operator (they would add a window to the state);
order-2 Hyena only; distillation by least squares + gradient refinement of the poles on the l2
error of the impulse response, instead of the paper's Hankel/balanced-truncation initialisation;
filters are tied per head (the MultiHyena idea) with ``filter_heads`` heads. Tiny widths.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records

PAPER = records.Paper(title="Laughing Hyena Distillery: Extracting Compact Recurrences From Convolutions", year=2023, arxiv="2310.18780")

FILTERS = ("implicit", "modal")


@dataclass
class LaughingHyenaConfig:
    """A stack of order-2 Hyena blocks whose long filters are implicit (Hyena) or modal (distilled)."""

    d_model: int = 128
    """Model width; published to later components as ``ctx.d_model``."""
    n_layers: int = 2
    """Number of Hyena blocks."""
    filter: str = "implicit"
    """'implicit' (Hyena's MLP filter; the state caches the history) or 'modal' (a distilled
    order-``order`` SSM; the state is O(order) per channel)."""
    filter_heads: int = 4
    """Filters are tied across channels into this many heads (d_model / filter_heads channels each)."""
    order: int = 8
    """Modal filter order d (number of complex poles per head)."""
    filter_hidden: int = 32
    """Width of the implicit filter's MLP."""
    filter_features: int = 8
    """Sine/cosine positional features of the implicit filter."""
    max_length: int = 1024
    """Time scale of the implicit filter's positional features (the filter is defined at any length)."""
    ffn_mult: int = 2
    """Feed-forward hidden width = ffn_mult x d_model."""
    norm_eps: float = 1e-5
    """LayerNorm epsilon."""

    def __post_init__(self):
        for name in ("d_model", "n_layers", "filter_heads", "order", "filter_hidden", "filter_features", "max_length", "ffn_mult"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.filter not in FILTERS:
            raise ValueError(f"filter must be one of {', '.join(FILTERS)}, got '{self.filter}'")
        if self.d_model % self.filter_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by filter_heads ({self.filter_heads})")

    def bind(self, ctx):
        ctx.set("d_model", self.d_model)


@hookimpl
def genloom_backbones():
    return [
        records.backbone(
            "laughing-hyena",
            "genloom.plugins.laughing_hyena.model:build",
            LaughingHyenaConfig,
            "Hyena long-convolution blocks; filters implicit or distilled into modal SSMs for O(1)-per-token decoding.",
            PAPER,
        )
    ]
