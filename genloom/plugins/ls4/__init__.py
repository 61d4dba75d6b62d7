"""LS4: Deep Latent State Space Models for Time-Series Generation (Zhou et al., 2023).

What the paper does: a sequential latent-variable model whose three networks are stacks of
state space layers instead of RNNs. The prior ``p(z_t | z_<t)`` is a Gaussian whose mean and
variance come from an SSM stack over the past latents; the generative model
``p(x_t | z_<=t)`` decodes the latents with another SSM stack; the posterior ``q(z_t | x)`` is a
third SSM stack over the observations. Because every stack is a linear time-invariant SSM with
pointwise non-linearities between layers, training computes all steps at once through each
layer's convolution kernel, while generation runs the same layers as recurrences, sampling one
latent per step from the prior. The ELBO's KL term between the Gaussian posterior and prior is
computed analytically per step.

What this implementation does: backbone ``ls4`` over time-step tokens (toolkit ``time-step``
tokenizer; the baseline ``forecast`` head's ``Linear(V, d)`` embedding and ``Linear(d, V)``
emission mean). Each stack is ``n_layers`` residual blocks ``h + Linear(GELU(SSM(LN h)))`` around
``genloom.toolkit.ssm.DiagonalSSM`` (kernel through the ``fft_conv`` op; recurrence through the
``linear_recurrence`` op). The prior reads the latents shifted right by one step (zeros first), so
its output at t sees only z_<t. Objective ``ls4``: the Gaussian emission error (unit variance:
half the squared error, summed over V) plus ``beta`` times the analytic KL per step, averaged;
``generate(model, n, length)`` samples ``z_t ~ p(z_t | z_<t)`` step by step with the prior run as a
recurrence (its state carried from step to step), then decodes.

What it simplifies: the decoder sees only the latents (the paper's also conditions on past
observations); diagonal (S4D-Lin) SSMs instead of the paper's S4 kernels; a fixed unit emission
variance; toy widths; the windows of a statsmodels series are the training sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import NonNegativeFloat, PositiveFloat, PositiveInt

PAPER = records.Paper(
    title="Deep Latent State Space Models for Time-Series Generation",
    year=2023,
    arxiv="2212.12749",
)

_P = "genloom.plugins.ls4"


@dataclass
class LS4Config:
    """Posterior, prior and decoder: stacks of diagonal-SSM blocks (convolution in training, recurrence in generation)."""

    d_model: PositiveInt = 32
    """Width of the SSM stacks; published to later components as ``ctx.d_model``."""
    latent: PositiveInt = 4
    """Latent size per step."""
    n_layers: PositiveInt = 1
    """SSM blocks in each of the three stacks."""
    modes: PositiveInt = 16
    """Complex modes N per SSM channel."""
    dt_min: PositiveFloat = 1e-3
    """Smallest initial step size of the SSMs (log-uniform in [dt_min, dt_max])."""
    dt_max: PositiveFloat = 1e-1
    """Largest initial step size."""

    def __post_init__(self):
        for name in ("d_model", "latent", "n_layers", "modes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"dt_min must be > 0 and <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}")

    def bind(self, ctx) -> None:
        ctx.set("d_model", self.d_model)


@dataclass
class LS4ObjectiveConfig:
    """The negative ELBO: Gaussian emission error + beta * analytic KL(q || p) per step."""

    beta: NonNegativeFloat = 1.0
    """Weight of the KL term (1: the ELBO)."""

    def __post_init__(self):
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")


@hookimpl
def genloom_backbones():
    return [records.backbone("ls4", f"{_P}.model:build", LS4Config,
                             "LS4: latent SSM prior, SSM posterior and SSM decoder (convolution in training, recurrence in generation).", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("ls4", f"{_P}.model:build_objective", LS4ObjectiveConfig,
                              "LS4 negative ELBO: Gaussian emission error + analytic per-step KL between SSM posterior and SSM prior.", PAPER)]
