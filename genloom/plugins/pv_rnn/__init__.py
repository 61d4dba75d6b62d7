"""PV-RNN: the predictive-coding-inspired variational RNN (Ahmadi and Tani, 2019).

What the paper does: a recurrent network with deterministic units d_t and stochastic units z_t.
The prior ``p(z_t | d_(t-1)) = N(mu_p, sigma_p^2)`` is computed from the previous deterministic
state; the posterior ``q(z_t) = N(mu_q, sigma_q^2)`` is *not* an encoder's output but a set of
free *adaptive vectors* ``A_t = (A_t^mu, A_t^sigma)`` (``mu_q = tanh(A^mu)``,
``sigma_q = exp(A^sigma)``), one per time step. ``d_t`` follows from ``d_(t-1)`` and ``z_t``; the
output ``x_t`` is read from ``d_t``. Learning minimises the prediction error plus ``w`` times the
KL between posterior and prior, where the *meta-prior* w sets how strongly the network relies
on its own prior (w = 0: no KL at all). At test time *error regression* infers the adaptive
vectors of the recent window only, by gradient descent on that window's prediction error +
w * KL with the network's weights unchanged; the future is then generated from the prior.

What this implementation does: backbone ``pv-rnn`` (a GRU cell over ``[z_t]`` as the deterministic
network, prior ``Linear(d, 2k)``, posterior from adaptive vectors given per window) and objective
``pv-rnn`` over time-step tokens (toolkit ``time-step`` tokenizer, baseline ``forecast`` head
``Linear(d, V)`` as the output layer). ``error_regression`` optimises the window's adaptive
vectors with Adam for ``regression_steps`` steps on ``MSE + w KL / V`` (network weights frozen:
only the adaptive vectors are passed to the optimiser). ``predict`` regresses on the lookback,
then rolls the deterministic state ``horizon`` steps further with the prior means.

What it simplifies: one GRU layer instead of the paper's multi-timescale RNN hierarchy; the
adaptive vectors of a training window are not stored per sequence but found by the same error
regression (``train_regression_steps`` steps from zero, weights then updated at those vectors),
i.e. semi-amortised; posterior and prior means (not samples) are used during error regression and
prediction, so forecasts are deterministic; training samples z from the posterior. Toy scale.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

PAPER = records.Paper(
    title="A novel predictive-coding-inspired variational RNN model for online prediction and recognition",
    year=2019,
    arxiv="1811.01339",
)

_P = "genloom.plugins.pv_rnn"


@dataclass
class PvRnnConfig:
    """Deterministic GRU units, stochastic units with a learned prior and adaptive-vector posteriors."""

    d_model: PositiveInt = 32
    """Deterministic units d; published to later components as ``ctx.d_model``."""
    latent: PositiveInt = 4
    """Stochastic units z per step."""

    def __post_init__(self):
        for name in ("d_model", "latent"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def bind(self, ctx) -> None:
        ctx.set("d_model", self.d_model)


@dataclass
class PvRnnObjectiveConfig:
    """Prediction error + meta-prior * KL, with error regression of the adaptive vectors."""

    meta_prior: NonNegativeFloat = 0.01
    """w: weight of the KL(q || p) term per step and variate (0 removes it)."""
    regression_steps: NonNegativeInt = 50
    """Error-regression steps on the lookback's adaptive vectors when forecasting."""
    train_regression_steps: NonNegativeInt = 5
    """Error-regression steps per training window before the weights are updated."""
    regression_lr: PositiveFloat = 0.1
    """Adam learning rate of error regression."""

    def __post_init__(self):
        if self.meta_prior < 0:
            raise ValueError(f"meta_prior must be >= 0, got {self.meta_prior}")
        for name in ("regression_steps", "train_regression_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.regression_lr <= 0:
            raise ValueError(f"regression_lr must be > 0, got {self.regression_lr}")


@hookimpl
def genloom_backbones():
    return [records.backbone("pv-rnn", f"{_P}.model:build", PvRnnConfig,
                             "PV-RNN: deterministic GRU units, stochastic units with a learned prior and adaptive-vector posteriors.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("pv-rnn", f"{_P}.model:build_objective", PvRnnObjectiveConfig,
                              "PV-RNN: prediction error + meta-prior * KL; error regression of the window's adaptive vectors (weights frozen).", PAPER)]
