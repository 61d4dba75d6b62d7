"""Mamba: Linear-Time Sequence Modeling with Selective State Spaces (Gu & Dao, 2023).

What the paper does. Mamba replaces attention by a *selective* state space model (S6): a
diagonal linear recurrence ``h[t] = exp(delta[t] A) h[t-1] + delta[t] B[t] x[t]``,
``y[t] = C[t] h[t] + D x[t]`` whose step size ``delta`` and projections ``B``, ``C`` are functions of
the input, so the model can choose per token what to keep and what to forget. Because the
parameters vary with time the model cannot be a convolution; the paper computes it with a
hardware-aware parallel scan that keeps the expanded state in fast memory. A Mamba block is
``in_proj`` to two streams x and z, a short causal depthwise convolution and SiLU on x, the
selective SSM on x, the gate ``y * silu(z)`` and ``out_proj``; blocks are stacked with pre-norm
residual connections. Training is parallel over the sequence; generation is recurrent with O(1)
state per token (the conv window and the SSM state).

What this implementation does. :mod:`.model` builds the block exactly in that layout (S4D-real
initialisation ``A = -exp(A_log)``, ``A_log = log(1..N)``; ``dt_proj`` bias initialised to the inverse
softplus of step sizes drawn log-uniformly in [dt_min, dt_max]; ``D = 1``), with RMSNorm pre-norm
residual blocks and a final RMSNorm. The scan is called through the kernel dispatcher
(``genloom.core.kernels.call("selective_scan", ...)``), so the ``reference``, ``chunked`` and
``triton`` backends of ``genloom/kernels/selective_scan`` all serve it. The incremental state
(:class:`~genloom.plugins.mamba.model.MambaState`) holds per layer the conv window
(B, d_inner, d_conv - 1) and the SSM state (B, d_inner, d_state); a forward with a state advances
it by any number of tokens; it can be reordered, snapshotted and rolled back within its most
recent advance.

What it simplifies. No fused CUDA kernels of the paper (its scan kernel fuses the discretization
and recomputes states in the backward; our Triton kernel fuses the forward only). Rollback keeps
the most recent advance's scan inputs and recomputes the rolled-back state with one masked scan
per layer (cheap: no projections), instead of storing every per-step state. Padding (``valid``)
is handled by moving each row's real tokens to the front and giving padded steps a zero step
size, which leaves the SSM state untouched. Only the causal pattern is served: a recurrent
model cannot see the future, so assembly refuses bidirectional objectives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import PositiveFloat, PositiveInt

PAPER = records.Paper(title="Mamba: Linear-Time Sequence Modeling with Selective State Spaces", year=2023, arxiv="2312.00752")


@dataclass
class MambaConfig:
    """A stack of Mamba blocks (pre-norm RMSNorm residual) with a final RMSNorm."""

    d_model: PositiveInt = 256
    """Model width; published to later components as ``ctx.d_model``."""
    n_layers: PositiveInt = 4
    """Number of Mamba blocks."""
    d_state: PositiveInt = 16
    """SSM state size N per channel."""
    d_conv: PositiveInt = 4
    """Width of the causal depthwise convolution before the SSM."""
    expand: PositiveInt = 2
    """Inner width d_inner = expand * d_model."""
    dt_rank: PositiveInt | None = None
    """Rank of the step-size projection (None: ceil(d_model / 16), the paper's choice)."""
    dt_min: PositiveFloat = 0.001
    """Smallest initial step size (the dt_proj bias is softplus^-1 of step sizes drawn log-uniformly between dt_min and dt_max)."""
    dt_max: PositiveFloat = 0.1
    """Largest initial step size."""
    dt_init_floor: PositiveFloat = 1e-4
    """Initial step sizes are clamped to at least this."""
    conv_bias: bool = True
    """Bias in the depthwise convolution."""
    bias: bool = False
    """Biases in in_proj and out_proj."""
    norm_eps: PositiveFloat = 1e-5
    """RMSNorm epsilon."""
    final_norm: bool = True
    """RMSNorm after the last block."""

    def __post_init__(self):
        for name in ("d_model", "n_layers", "d_state", "d_conv", "expand"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.dt_rank is not None and self.dt_rank < 1:
            raise ValueError(f"dt_rank must be at least 1 (or None for ceil(d_model / 16)), got {self.dt_rank}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}")
        if self.dt_init_floor <= 0:
            raise ValueError(f"dt_init_floor must be > 0, got {self.dt_init_floor}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def resolved_dt_rank(self) -> int:
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.d_model / 16)

    def bind(self, ctx):
        ctx.set("d_model", self.d_model)


@hookimpl
def genloom_backbones():
    return [
        records.backbone(
            "mamba",
            "genloom.plugins.mamba.model:build",
            MambaConfig,
            "Mamba selective state space backbone (S6 scan, causal conv, gated blocks); O(1) recurrent state.",
            PAPER,
        )
    ]
