"""Stable Neural SDEs for irregular time series (Oh, Lim, Kim, Park; ICLR 2024).

What the paper does: a neural SDE ``dz = f(t, z) dt + g(t, z) dW`` whose latent state is driven
by a continuous *control path* X(t) interpolated through the (irregular, possibly incomplete)
observations, as in neural CDEs. Careless drift/diffusion choices lose strong solutions or
destabilise, so the paper proposes three classes with a prescribed diffusion:

- Langevin-type SDE (LSDE): ``dz = f(t, z, X) dt + sigma(t) dW`` -- additive noise, independent of z;
- linear-noise SDE (LNSDE): ``dz = f(t, z, X) dt + sigma(t) z dW`` -- noise proportional to z;
- geometric SDE (GSDE): ``dz / z = f(t, z, X) dt + sigma(t) dW`` -- multiplicative; by Ito's lemma
  ``d log z = (f - sigma^2 / 2) dt + sigma dW``, so simulated in log space a path never changes sign.

The drift is a neural network of (t, z, X(t)); sigma(t) is a small network of time only.

What this implementation does:

- ``control_path(times, values, mask)``: linear interpolation of the observed values in time
  (missing values skipped, the ends held), evaluated on the integration grid;
- backbone ``stable-sde``: embedded steps (B, L, d) are the control; ``z_0`` from the first
  observed step; Euler-Maruyama over the L observed steps (control interpolated where ``valid``
  is False), then ``horizon`` more steps with the control held at its last value; returns the
  latent path over the future steps (B, horizon, d). ``kind`` picks LSDE, LNSDE or GSDE; the GSDE
  is integrated in log space on a positive latent;
- tokens: the toolkit's ``time-step`` tokenizer and the baseline ``forecast`` head
  (``Linear(V, d)`` in, ``Linear(d, V)`` out); objective: the baseline ``mse``.

What it simplifies: Euler-Maruyama with one step per observation interval (the paper uses
torchsde solvers); the forecast is the mean of one sampled path per window in training and of
``eval_paths`` paths at evaluation; drift networks of toy width; the paper's classification and
interpolation heads are not built (forecasting only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genloom.core import hookimpl, records

PAPER = records.Paper(
    title="Stable Neural Stochastic Differential Equations in Analyzing Irregular Time Series Data",
    year=2024,
    arxiv="2402.14989",
)

_P = "genloom.plugins.stable_neural_sde"


@dataclass
class StableSdeConfig:
    """A controlled neural SDE of one of the paper's three stable classes."""

    kind: Literal["langevin", "linear-noise", "geometric"] = "linear-noise"
    """Diffusion class: 'langevin' (sigma(t)), 'linear-noise' (sigma(t) z) or 'geometric' (sigma(t) z, log space)."""
    d_model: int = 32
    """Latent width; published as ``ctx.d_model``."""
    hidden: int = 64
    """Hidden width of the drift network."""
    dt: float = 0.1
    """Time between consecutive steps of the integration grid."""
    horizon: int | None = None
    """Future steps integrated after the observations (None: the data set's horizon)."""
    eval_paths: int = 8
    """Sample paths averaged at evaluation (1 while training)."""

    def __post_init__(self):
        if self.kind not in ("langevin", "linear-noise", "geometric"):
            raise ValueError(f"kind must be 'langevin', 'linear-noise' or 'geometric', got '{self.kind}'")
        for name in ("d_model", "hidden", "eval_paths"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.dt <= 0:
            raise ValueError(f"dt must be > 0, got {self.dt}")
        if self.horizon is not None and self.horizon < 1:
            raise ValueError(f"horizon must be at least 1, got {self.horizon}")

    def bind(self, ctx) -> None:
        if self.horizon is None:
            self.horizon = ctx.horizon
        ctx.set("d_model", self.d_model)


@hookimpl
def genloom_backbones():
    return [records.backbone("stable-sde", f"{_P}.model:build", StableSdeConfig,
                             "Stable neural SDE (Langevin, linear-noise or geometric) driven by the interpolated control path.", PAPER)]
