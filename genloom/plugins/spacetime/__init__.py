"""SpaceTime: Effectively Modeling Time Series with Simple Discrete State Spaces (Zhang et al., 2023).

What the paper does: every SSM of the network is discrete with a *companion* state matrix
``A = S + a e_p^T`` (ones on the sub-diagonal, learnable last column a). A companion SSM can
represent any AR(p) process exactly (the last column holds the AR coefficients), which
diagonal SSMs (S4D...) cannot. Its convolution kernel ``K_k = C A^k B`` is computed without matrix
powers: at the roots of unity the kernel's generating function is ``C (I - A^L)(I - z A)^-1 B``,
and ``(I - z A)^-1`` of a shift-plus-rank-one matrix is cheap (Sherman-Morrison), so an inverse FFT
returns the kernel in O(p L) + FFT time; the layer then runs as a long convolution. For long
horizons the last layer is a *closed-loop* SSM: after reading the lookback it also predicts its
own next input ``u_(k+1) = K x_k`` and keeps rolling the state forward on those predictions, so it
forecasts any horizon autoregressively without attention to the future.

What this implementation does: backbone ``spacetime`` over time-step tokens (the toolkit's
``time-step`` tokenizer, the baseline ``forecast`` head and ``mse`` objective). ``n_layers``
encoder blocks ``h + Linear(GELU(SSM(LN h)))``, each SSM a companion SSM per channel whose kernel
is ``genloom.toolkit.ssm.companion_kernel`` (the fast algorithm) applied through the ``fft_conv``
kernel op; then a closed-loop companion SSM per channel reads the encoded lookback by the
recurrence (``toolkit.ssm.dense_recurrence``) and rolls ``horizon`` steps feeding its own predicted
inputs; its outputs (after a LayerNorm) are the forecast steps.

What it simplifies: no separate shift-SSM preprocessing layers (the paper's fixed
differencing/moving-average kernels); the closed-loop layer is trained only through the forecast
loss (the paper also supervises its next-input predictions on the lookback); a is initialised
small (N(0, 0.1^2) / p) and left unconstrained. Toy scale.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import Fraction, PositiveFloat, PositiveInt

PAPER = records.Paper(
    title="Effectively Modeling Time Series with Simple Discrete State Spaces",
    year=2023,
    arxiv="2303.09489",
)

_P = "genloom.plugins.spacetime"


@dataclass
class SpaceTimeConfig:
    """Companion-matrix SSM encoder blocks (fast kernel, long convolution) and a closed-loop companion SSM decoder."""

    d_model: PositiveInt = 32
    """Model width (one companion SSM per channel); published to later components as ``ctx.d_model``."""
    n_layers: PositiveInt = 2
    """Encoder blocks (the closed-loop decoder comes after them)."""
    order: PositiveInt = 8
    """p, the state size of each companion SSM (the AR order it can represent)."""
    init_scale: PositiveFloat = 0.1
    """Standard deviation of the initial B, C and of p * a (the companion matrix's last column)."""
    horizon: PositiveInt | None = None
    """Steps the closed loop rolls forward (None: the data set's horizon)."""
    dropout: Fraction = 0.0
    """Dropout after each encoder SSM."""

    def __post_init__(self):
        for name in ("d_model", "n_layers", "order"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.init_scale <= 0:
            raise ValueError(f"init_scale must be > 0, got {self.init_scale}")
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
    return [records.backbone("spacetime", f"{_P}.model:build", SpaceTimeConfig,
                             "SpaceTime: companion-matrix SSMs (fast kernel through fft_conv) and a closed-loop SSM forecaster.", PAPER)]
