"""SMR: State Memory Replay for Long Sequence Modeling (Qi et al., 2024).

What the paper does. Read through event-triggered control theory, an SSM whose inputs arrive at
sampling points other than those seen in training suffers a *non-stable state*: errors of the
hidden state are transmitted and accumulate. Recursive fixes (S5, Mamba's input-dependent steps)
give up the convolutional form. SMR instead adjusts each *input* with learnable memories of the
previous inputs (multi-step information), before the SSM: a non-recursive, plug-and-play step,
so the SSM keeps its FFT-convolution form; with the memory switched off it is the base SSM.

What this implementation does. :mod:`.model` puts SMR in front of a diagonal SSM
(:class:`genloom.toolkit.ssm.DiagonalSSM`, S4D-style) in pre-norm residual blocks
(``h + W_o gelu(SSM(SMR(LN h)))``, then an FFN). The replay adjusts the input with a learnable
memory of its last m inputs, per channel::

    u'_t = u_t + sum_{j=1..m} p_j * u_{t-j}             (p (m, D), initialised to zero)

It looks only at past *inputs*, never at states or outputs, so the SSM+SMR layer is still one
causal convolution (FFT in training) and still a recurrence (the SSM's modes plus an m-step input
window) in decoding; with p = 0 it is the base SSM exactly.

What it simplifies. The paper's exact parametrisation of the memory is not reproduced; we take
the additive learnable multi-step memory above (the property the paper relies on: non-recursive,
input-only, zero = base SSM) and say so here and on the catalogue page. The base SSM is a
DSS/S4D layer, not S4/S5/Mega variants; no sampling-step-adaptation experiments; tiny widths.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records

PAPER = records.Paper(title="SMR: State Memory Replay for Long Sequence Modeling", year=2024, arxiv="2405.17534")


@dataclass
class SMRConfig:
    """A stack of SMR + diagonal SSM blocks (pre-norm residual, then an FFN)."""

    d_model: int = 128
    """Model width; published to later components as ``ctx.d_model``."""
    n_layers: int = 2
    """Number of blocks."""
    memory_steps: int = 4
    """SMR memory length m (previous inputs replayed); 0 turns SMR off (the base SSM)."""
    state_size: int = 16
    """N complex modes per SSM channel."""
    dt_min: float = 0.001
    """Smallest initial SSM step (log-uniform between dt_min and dt_max)."""
    dt_max: float = 0.1
    """Largest initial SSM step."""
    ffn_mult: int = 2
    """Feed-forward hidden width = ffn_mult x d_model."""
    norm_eps: float = 1e-5
    """LayerNorm epsilon."""

    def __post_init__(self):
        for name in ("d_model", "n_layers", "state_size", "ffn_mult"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.memory_steps < 0:
            raise ValueError(f"memory_steps must be >= 0 (0 turns SMR off), got {self.memory_steps}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}")

    def bind(self, ctx):
        ctx.set("d_model", self.d_model)


@hookimpl
def genloom_backbones():
    return [
        records.backbone(
            "smr",
            "genloom.plugins.smr.model:build",
            SMRConfig,
            "State Memory Replay: a learnable multi-step input memory before a diagonal SSM; stays a convolution.",
            PAPER,
        )
    ]
