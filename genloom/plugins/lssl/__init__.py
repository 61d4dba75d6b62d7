"""LSSL: Linear State-Space Layers (Gu et al., 2021).

What the paper does: a layer maps a 1-D input u to an output y through the continuous state space
model ``x' = A x + B u``, ``y = C x + D u``, discretised with step dt by the bilinear method
(``Abar = (I - dt/2 A)^-1 (I + dt/2 A)``, ``Bbar = (I - dt/2 A)^-1 dt B``). The same layer has a
recurrent view (``x_k = Abar x_(k-1) + Bbar u_k``) and a convolutional view
(``y = K * u + D u`` with the kernel ``K_k = C Abar^k Bbar``). A is initialised from HiPPO
(LegS or LegT), which makes the state an online projection of the input history onto Legendre
polynomials and gives long-range memory; dt is learned per channel. Deep LSSLs stack such layers
(one SSM per feature) with a position-wise mixing and non-linearity.

What this implementation does: backbone ``lssl`` over time-step tokens (the toolkit's ``time-step``
tokenizer and the baseline ``forecast`` head). The embedded lookback is followed by ``horizon``
zero placeholders; each of ``n_layers`` residual blocks applies, per channel of d_model, the
HiPPO-initialised SSM (``genloom.toolkit.ssm``: ``hippo``, ``bilinear``, ``dense_kernel`` by
Krylov doubling) through the ``fft_conv`` kernel op, then GELU and ``Linear(d, d)``. The layer is
causal, so the last ``horizon`` outputs (the forecast) see only the lookback.
``LSSLLayer.recurrent`` runs the same layer step by step (the reference its test compares with).

What it simplifies: A and B are shared by the channels and trained (the paper's LSSL-fixed keeps
them fixed: ``train_a: false``), C is per channel, dt per channel log-uniform in [dt_min, dt_max];
one SSM copy per feature (the paper's M copies with a mixing layer are one ``Linear`` here); no
stability re-projection of A. Toy scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genloom.core import hookimpl, records
from genloom.core.constraints import Fraction, PositiveFloat, PositiveInt

PAPER = records.Paper(
    title="Combining Recurrent, Convolutional, and Continuous-time Models with Linear State-Space Layers",
    year=2021,
    arxiv="2110.13985",
)

_P = "genloom.plugins.lssl"


@dataclass
class LSSLConfig:
    """Residual blocks of HiPPO-initialised linear state space layers (bilinear, convolutional view)."""

    d_model: PositiveInt = 32
    """Model width (one SSM per channel); published to later components as ``ctx.d_model``."""
    n_layers: PositiveInt = 2
    """Residual LSSL blocks."""
    state_size: PositiveInt = 32
    """N, the order of the HiPPO state."""
    measure: Literal["legs", "legt"] = "legs"
    """HiPPO measure A and B are initialised from: scaled (legs) or translated (legt) Legendre."""
    dt_min: PositiveFloat = 1e-3
    """Smallest initial step size (dt is log-uniform in [dt_min, dt_max] per channel)."""
    dt_max: PositiveFloat = 1e-1
    """Largest initial step size."""
    train_a: bool = True
    """Learn A and B (false: LSSL-fixed, the HiPPO matrices stay as initialised)."""
    horizon: PositiveInt | None = None
    """Zero placeholders appended after the lookback, whose outputs are the forecast (None: the data set's)."""
    dropout: Fraction = 0.0
    """Dropout after each block's SSM."""

    def __post_init__(self):
        for name in ("d_model", "n_layers", "state_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.measure not in ("legs", "legt"):
            raise ValueError(f"measure must be 'legs' or 'legt', got '{self.measure}'")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"dt_min must be > 0 and <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}")
        if self.horizon is not None and self.horizon < 1:
            raise ValueError(f"horizon must be at least 1, got {self.horizon}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def bind(self, ctx) -> None:
        if self.horizon is None:
            self.horizon = ctx.horizon
        ctx.set("d_model", self.d_model)


@hookimpl
def genloom_backbones():
    return [records.backbone("lssl", f"{_P}.model:build", LSSLConfig,
                             "LSSL: HiPPO-initialised linear state space layers, bilinear discretisation, run as a long convolution (fft_conv).", PAPER)]
