"""Config of the amortised-inference toolkit's registered parts (torch-free).

The runtime lives in :mod:`genloom.toolkit.amortized`; the baseline plugin registers the
``point-set`` tokenizer and the ``gp-prior`` data set so that every in-context / amortised
inference technique (PFN, neural processes, ...) trains on the same synthetic tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from genloom.core.constraints import AnyFloat, PositiveFloat, PositiveInt, Seed


@dataclass
class PointSetTokenizerConfig:
    """Real-valued points passed through as they are: a task is a set of (x, y) pairs, not token ids."""


@dataclass
class GpPriorConfig:
    """Synthetic regression tasks drawn from a Gaussian-process prior (RBF kernel), with the exact posterior as reference.

    Each sample is one task: ``n_points`` inputs x ~ U[x_low, x_high]^x_dim, a function f ~ GP(0,
    outputscale * exp(-|x - x'|^2 / (2 lengthscale^2))) and noisy labels y = f(x) + noise * eps.
    A task of split s and index i is a deterministic function of (seed, s, i), so the test tasks
    are held out: no training task shares their seed.
    """

    n_points: PositiveInt = 40
    """Points per task (context + queries); the objective splits them."""
    x_dim: PositiveInt = 1
    """Input dimension."""
    lengthscale: PositiveFloat = 0.3
    """RBF kernel lengthscale."""
    outputscale: PositiveFloat = 1.0
    """RBF kernel variance (prior variance of f)."""
    noise: PositiveFloat = 0.1
    """Standard deviation of the observation noise."""
    x_low: AnyFloat = -1.0
    """Lower end of the input range."""
    x_high: AnyFloat = 1.0
    """Upper end of the input range."""
    train_tasks: PositiveInt = 200_000
    """Tasks in the training split (drawn lazily; an epoch seldom ends)."""
    eval_tasks: PositiveInt = 256
    """Tasks in each of the val and test splits."""
    seed: Seed = 0
    """Seed of the task draws."""
    batch_size: PositiveInt = 32
    """Tasks per training batch."""
    eval_batch_size: PositiveInt | None = None
    """Tasks per evaluation batch (None: batch_size)."""

    def __post_init__(self):
        if not self.x_low < self.x_high:
            raise ValueError(f"x_low ({self.x_low}) must be below x_high ({self.x_high})")

    def bind(self, ctx) -> None:
        ctx.set("x_dim", self.x_dim)
        ctx.set("n_points", self.n_points)
        ctx.set("y_scale", (self.outputscale + self.noise**2) ** 0.5)
        ctx.set("x_low", self.x_low)
        ctx.set("x_high", self.x_high)
