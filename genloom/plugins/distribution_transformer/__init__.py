"""Distribution Transformers (2025).

What the paper does. Approximate Bayesian inference as a learned map from a prior to a posterior,
both represented as Gaussian mixtures. Each component of the prior mixture (its weight, mean and
covariance) becomes a token; the component tokens attend to each other through self-attention and
to the data points through cross-attention, and each output token is read back as one component
of the posterior mixture. Neither attention has positions, so the posterior is invariant to the
order of the data and equivariant to the order of the prior's components; since the prior is an
input, a new prior needs no retraining ("on-the-fly prior adaptation"). It is trained on data sets
simulated from priors, by maximising the posterior's likelihood of the parameter that generated
the data (an amortised forward KL), and matches exact or sampling-based posteriors in a single
forward pass.

What this implementation does.

- data set ``gaussian-mean-tasks``: each task draws its own prior (a K-component Gaussian mixture
  over theta in R^d: Dirichlet(1) weights, N(0, mean_scale^2) means, isotropic variances), a theta
  from it and ``n_points`` observations y_n ~ N(theta, noise_var I); the exact posterior is the
  mixture of :func:`genloom.toolkit.amortized.gmm_mean_posterior`.
- head ``gmm``: embeds a component as MLP(log w_k, m_k, lower-triangle of chol S_k) and a data
  point as MLP(y_n); reads an output token as an update of its prior component: weight logit
  log w_k + a_k (softmax over components: the weights sum to 1), mean m_k + b_k, Cholesky factor
  with a softplus diagonal (+1e-4), so every covariance is positive definite.
- backbone ``distribution-transformer``: layers of [component self-attention, component -> data
  cross-attention, feed-forward], pre-LayerNorm residual, no positions; the sequence is
  ``[data tokens | component tokens]`` and the number of data tokens travels in the objective's
  :class:`~genloom.toolkit.amortized.ContextQueryPattern` (data = context).
- objective ``posterior-nll``: draws the number of observed points per batch in
  ``[0, n_points]`` and minimises ``-log q(theta | prior, y_1..n)``; ``evaluate_run`` reports the
  Monte Carlo KL from the exact posterior to the predicted one on held-out tasks.

What it simplifies. One likelihood family (Gaussian mean with a known noise variance) instead of
the paper's sensor-fusion, quantum and GP-hyperprior tasks; d = 1 by default; the data tokens are
not refined by self-attention of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

from genloom.core import hookimpl, records
from genloom.core.constraints import NonNegativeInt, PositiveFloat, PositiveInt, Seed

PAPER = records.Paper(
    title="Distribution Transformers: Fast Approximate Bayesian Inference With On-The-Fly Prior Adaptation",
    year=2025,
)

_P = "genloom.plugins.distribution_transformer"


@dataclass
class GaussianMeanTasksConfig:
    """Gaussian-mean estimation tasks, each with its own random Gaussian-mixture prior (exact posterior known)."""

    dim: PositiveInt = 1
    """Dimension d of theta and of each observation."""
    components: PositiveInt = 2
    """Components K of every prior mixture."""
    noise_var: PositiveFloat = 1.0
    """Observation noise variance (known to the model through training)."""
    mean_scale: PositiveFloat = 2.0
    """Standard deviation of the prior components' means."""
    var_low: PositiveFloat = 0.25
    """Smallest prior component variance."""
    var_high: PositiveFloat = 1.5
    """Largest prior component variance."""
    n_points: PositiveInt = 16
    """Observations per task (the objective uses a random number of them)."""
    train_tasks: PositiveInt = 200_000
    """Tasks in the training split (drawn lazily)."""
    eval_tasks: PositiveInt = 512
    """Tasks in each of val and test."""
    seed: Seed = 0
    """Seed of the task draws (disjoint streams per split)."""
    batch_size: PositiveInt = 64
    """Tasks per training batch."""
    eval_batch_size: PositiveInt | None = None
    """Tasks per evaluation batch (None: batch_size)."""

    def __post_init__(self):
        if self.var_high < self.var_low:
            raise ValueError(f"var_high ({self.var_high}) must be >= var_low ({self.var_low})")

    def bind(self, ctx) -> None:
        ctx.set("theta_dim", self.dim)
        ctx.set("n_points", self.n_points)


@dataclass
class GmmHeadConfig:
    """Prior components and data points in; each output token read as an update of its prior component."""

    dim: PositiveInt | None = None
    """Dimension of theta (None: the data set's)."""
    d_model: PositiveInt | None = None
    """Hidden width (None: the backbone's)."""
    hidden: PositiveInt = 64
    """Width of the embedding and read-out MLPs."""

    def bind(self, ctx) -> None:
        if self.dim is None:
            self.dim = ctx.theta_dim
        if self.d_model is None:
            self.d_model = ctx.d_model


@dataclass
class DistributionTransformerConfig:
    """Component self-attention, component -> data cross-attention, feed-forward; no positions."""

    d_model: PositiveInt = 64
    """Model width; published as ``ctx.d_model``."""
    n_layers: PositiveInt = 2
    """Blocks of [self-attention, cross-attention, feed-forward]."""
    n_heads: PositiveInt = 4
    """Attention heads."""

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")

    def bind(self, ctx) -> None:
        ctx.set("d_model", self.d_model)


@dataclass
class PosteriorNllConfig:
    """-log q(theta | prior, data): the parameter that generated the data scored under the predicted posterior."""

    min_points: NonNegativeInt = 0
    """Fewest observations drawn per training batch."""
    kl_samples: PositiveInt = 2048
    """Monte Carlo samples of the KL estimate in ``evaluate_run``."""


@hookimpl
def genloom_datasets():
    return [records.dataset("gaussian-mean-tasks", f"{_P}.model:build_data", GaussianMeanTasksConfig,
                            "Gaussian-mean tasks with random Gaussian-mixture priors and their exact mixture posteriors.", PAPER)]


@hookimpl
def genloom_heads():
    return [records.head("gmm", f"{_P}.model:build_head", GmmHeadConfig,
                         "Mixture components and data points as tokens; output tokens read as posterior components.", PAPER)]


@hookimpl
def genloom_backbones():
    return [records.backbone("distribution-transformer", f"{_P}.model:build_backbone", DistributionTransformerConfig,
                             "Mixture-component tokens: self-attention among them, cross-attention to the data, no positions.", PAPER)]


@hookimpl
def genloom_objectives():
    return [records.objective("posterior-nll", f"{_P}.model:build_objective", PosteriorNllConfig,
                              "Amortised posterior: -log q(theta | prior, data) of the generating parameter.", PAPER)]
