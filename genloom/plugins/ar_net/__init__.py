"""AR-Net: A simple Auto-Regressive Neural Network for time-series (Triebe et al., 2019).

What the paper does: it fits a classic auto-regressive process y_t = b + sum_{i=1..p} w_i y_{t-i}
with a feed-forward network trained by stochastic gradient descent instead of least squares. With
a single linear layer the learned weights *are* the AR coefficients (as interpretable as
Classic-AR, fitted in time linear in p); optional hidden layers make it a deep AR-Net. Its
regulariser makes the coefficients sparse, so the order p can be over-specified and the model
selects the lags that matter:

    loss = MSE + lambda * R(w),   R(w) = 1/p * sum_i ( 2 / (1 + exp(-c1 * |w_i|^(1/c2))) - 1 ),

with c1 = c2 = 3 and lambda = c_lambda * (1/s - 1) set from the expected sparsity s (the share of
non-zero coefficients, e.g. p_true / p_model); R is a smooth, saturating, non-convex penalty
(close to an L0 count for large |w|, steep near zero like |w|^(1/3)).

What this implementation does:

- head ``ar-net``: takes the last ``order`` values of each variate token (the ``variate``
  tokenizer's windows, with ``instance_norm: false`` so the coefficients are those of the series)
  and maps them to the horizon: one ``Linear(order, horizon)`` (the paper's AR-Net; ``horizon: 1``
  is the one-step AR model) or, with hidden layers, ``Linear(order, hidden)`` first and
  ``Linear(hidden, horizon)`` last. The first layer is the one that sees the lags; its weights are
  regularised and reported by ``coefficients()`` (column i = lag i + 1);
- backbone ``ar-net``: the hidden layers between them (ReLU, then ``hidden_layers - 1`` times
  Linear + ReLU), a no-op for the single-layer AR-Net; every variate is modelled on its own
  (shared weights, no mixing between variate tokens);
- objective ``ar-net``: the baseline ``mse`` objective (built through the registry) plus
  ``lambda * R`` on the first layer's weights.

What it simplifies or chooses: no learning-rate range test or the paper's training schedule (the
usual AdamW loop); R is evaluated on max(|w|, 1e-12) so its gradient stays finite at 0, and the
regulariser can be delayed and ramped in (``delay_steps``, ``ramp_steps``) because from a zero
start the steep penalty can pin every weight at 0; ``c_lambda`` defaults to 0.1 (tuned on
unit-variance synthetic AR data, the paper's constant was not confirmed); several variates share
one set of coefficients (the paper models one series at a time).
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import NonNegativeFloat, NonNegativeInt, PositiveInt, Probability

PAPER = records.Paper(
    title="AR-Net: A simple Auto-Regressive Neural Network for time-series",
    year=2019,
    arxiv="1911.12436",
)

_P = "genloom.plugins.ar_net"


@dataclass
class ArNetConfig:
    """Hidden layers of a deep AR-Net (none: the paper's single linear layer)."""

    hidden_layers: NonNegativeInt = 0
    """Number of hidden layers; 0 gives the single-layer, interpretable AR-Net."""
    hidden_size: PositiveInt = 32
    """Width of the hidden layers (used when hidden_layers > 0); published as ``ctx.d_model``."""

    def __post_init__(self):
        if self.hidden_layers < 0:
            raise ValueError(f"hidden_layers must be >= 0, got {self.hidden_layers}")
        if self.hidden_size < 1:
            raise ValueError(f"hidden_size must be at least 1, got {self.hidden_size}")

    def bind(self, ctx) -> None:
        ctx.set("ar_net_hidden_size", self.hidden_size if self.hidden_layers else 0)
        if self.hidden_layers:
            ctx.set("d_model", self.hidden_size)


@dataclass
class ArNetHeadConfig:
    """The lags in, the forecast out; the first layer's weights are the AR coefficients."""

    order: PositiveInt | None = None
    """AR order p: how many of the most recent values are used (None: the whole lookback)."""
    lookback: PositiveInt | None = None
    """Values per input token (None: the data set's lookback)."""
    horizon: PositiveInt | None = None
    """Forecast steps (None: the data set's horizon); 1 gives the one-step AR model."""
    hidden_size: PositiveInt | None = None
    """Width of the hidden representation (None: from the ar-net backbone; 0: no hidden layers)."""
    bias: bool = True
    """Intercept (the AR process's constant)."""

    def __post_init__(self):
        for name in ("order", "lookback", "horizon"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.hidden_size is not None and self.hidden_size < 0:
            raise ValueError(f"hidden_size must be >= 0, got {self.hidden_size}")
        if self.order is not None and self.lookback is not None and self.order > self.lookback:
            raise ValueError(f"order ({self.order}) cannot exceed lookback ({self.lookback})")

    def bind(self, ctx) -> None:
        if self.lookback is None:
            self.lookback = ctx.lookback
        if self.horizon is None:
            self.horizon = ctx.horizon
        if self.order is None:
            self.order = self.lookback
        if self.order > self.lookback:
            raise ValueError(f"order ({self.order}) cannot exceed the lookback ({self.lookback})")
        if self.hidden_size is None:
            self.hidden_size = ctx.get("ar_net_hidden_size", 0)
        if not self.hidden_size:
            ctx.set("d_model", self.order)


@dataclass
class ArNetObjectiveConfig:
    """Forecast MSE plus AR-Net's sparsity regulariser on the AR coefficients."""

    sparsity: Probability | None = None
    """Expected share s of non-zero coefficients (e.g. true order / model order); lambda = c_lambda * (1/s - 1). None: no regulariser."""
    strength: NonNegativeFloat | None = None
    """lambda given directly (overrides sparsity)."""
    c_lambda: NonNegativeFloat = 0.1
    """Scale of lambda when it is derived from sparsity (this implementation's default, tuned on unit-variance synthetic AR data)."""
    c1: NonNegativeFloat = 3.0
    """Steepness of the regulariser R."""
    c2: NonNegativeFloat = 3.0
    """Root applied to |w| inside R (3: cube root)."""
    delay_steps: NonNegativeInt = 0
    """Training steps before the regulariser starts (a first unregularised fit, so coefficients leave the penalty's cusp at 0)."""
    ramp_steps: NonNegativeInt = 0
    """Training steps over which lambda then grows linearly to its full value."""
    pattern: str = "full"
    """Attention pattern passed on to the backbone (AR-Net mixes no tokens; any pattern works)."""

    def __post_init__(self):
        if self.sparsity is not None and not 0.0 < self.sparsity <= 1.0:
            raise ValueError(f"sparsity must be in (0, 1], got {self.sparsity}")
        if self.strength is not None and self.strength < 0:
            raise ValueError(f"strength must be >= 0, got {self.strength}")
        if self.c1 <= 0 or self.c2 <= 0:
            raise ValueError("c1 and c2 must be > 0")
        if self.delay_steps < 0 or self.ramp_steps < 0:
            raise ValueError("delay_steps and ramp_steps must be >= 0")

    @property
    def lam(self) -> float:
        """The regularisation strength lambda."""
        if self.strength is not None:
            return self.strength
        if self.sparsity is None:
            return 0.0
        return self.c_lambda * (1.0 / self.sparsity - 1.0)


@hookimpl
def genloom_heads():
    return [records.head("ar-net", f"{_P}.model:build_head", ArNetHeadConfig,
                         "AR-Net: last p lags -> forecast through one linear layer (weights = AR coefficients).", PAPER)]


@hookimpl
def genloom_backbones():
    return [records.backbone("ar-net", f"{_P}.model:build_backbone", ArNetConfig,
                             "AR-Net hidden layers (none for the single-layer AR-Net); each variate on its own.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("ar-net", f"{_P}.objective:build", ArNetObjectiveConfig,
                              "Forecast MSE + AR-Net's sparsity regulariser on the AR coefficients.", PAPER)]
