"""Gated State Spaces: Long Range Language Modeling via Gated State Spaces (Mehta et al., 2022).

What the paper does. A GSS layer is a gated unit around a diagonal state space (DSS) long
convolution, run on a *reduced* width so the FFT convolution is cheap::

    v  = gelu(x W_v)                 (F wide)        u  = gelu(x W_u)     (H wide, H < F)
    y  = DSS(u)                      causal convolution of every channel with its SSM kernel
    o  = ((y W_c) * v) W_o + x       (the gate does the work attention would)

The DSS kernel of a channel is ``K[l] = Re(sum_n w_n exp(lambda_n Delta l))`` (N complex modes,
diagonal state matrix), computed for all lags at once and applied by FFT in O(L log L). Being a
linear time-invariant system, the same layer is also an O(1)-per-token recurrence over the modes.

What this implementation does. :mod:`.model` builds the layer in that layout (pre-norm, residual,
layers stacked). :class:`genloom.toolkit.ssm.DiagonalSSM` computes the DSS kernel (ZOH-discretised residues,
``lambda = -exp(log_re) + i im``, S4D-Lin initialisation ``im = pi n``, ``log Delta`` uniform in
[log 1e-3, log 1e-1]); the convolution goes through the ``fft_conv`` op (``fft``, ``chunked`` or
the direct ``reference`` backend). Decoding, padding with holes and rollback use the modal
recurrence ``s_n(t) = exp(lambda_n Delta) s_n(t-1) + u(t)``, ``y(t) = Re(sum_n w_n s_n(t)) + D u(t)``
through the ``linear_recurrence`` op (H heads, N modes as the key channels, value width 1), whose
impulse response is exactly the kernel.

What it simplifies. Tiny widths; no DSS-softmax normalisation variant (the exp form with a ZOH
residue factor); the same N complex modes for all channels' lambda but per-channel Delta and
residues, as in DSS; no claim about the paper's PG-19/arXiv/GitHub perplexities.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records

PAPER = records.Paper(title="Long Range Language Modeling via Gated State Spaces", year=2022, arxiv="2206.13947")


@dataclass
class GSSConfig:
    """A stack of GSS layers (pre-norm, residual)."""

    d_model: int = 128
    """Model width E; published to later components as ``ctx.d_model``."""
    n_layers: int = 2
    """Number of GSS layers."""
    expand: int = 2
    """Gate width F = expand x d_model."""
    ssm_width: int = 32
    """Reduced width H on which the DSS convolution runs (H < F in the paper)."""
    state_size: int = 16
    """N complex modes per DSS channel."""
    dt_min: float = 0.001
    """Smallest initial step Delta (log-uniform between dt_min and dt_max)."""
    dt_max: float = 0.1
    """Largest initial step Delta."""
    norm_eps: float = 1e-5
    """LayerNorm epsilon."""

    def __post_init__(self):
        for name in ("d_model", "n_layers", "expand", "ssm_width", "state_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}")

    def bind(self, ctx):
        ctx.set("d_model", self.d_model)


@hookimpl
def genloom_backbones():
    return [
        records.backbone(
            "gss",
            "genloom.plugins.gss.model:build",
            GSSConfig,
            "Gated State Spaces: a gated unit around a DSS long convolution (fft_conv) on a reduced width; recurrent decoding.",
            PAPER,
        )
    ]
